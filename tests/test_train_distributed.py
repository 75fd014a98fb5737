"""Data-parallel training: two gloo processes (as torchrun would start them) end with identical weights."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from cocu.train.config import load_config
from cocu.train.trainer import train
from test_train_world import make_world, tiny_run_overrides

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, overrides: list[str], result_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)

    def keep_weights(info):
        if info.step == STEPS:
            state = {k: v.detach().clone() for k, v in info.module.state_dict().items()}
            torch.save(state, os.path.join(result_dir, f"rank{rank}.pt"))

    result = train(load_config(None, overrides), on_step=keep_weights)
    torch.save({"steps": result.steps, "loss": result.final_loss}, os.path.join(result_dir, f"result{rank}.pt"))


@pytest.mark.slow  # two fresh interpreters import torch + transformers: ~25 s on a quiet 2-core machine
def test_two_gloo_ranks_train_in_lockstep_and_hold_identical_weights(tmp_path):
    world = make_world(tmp_path / "world", n=16)
    out = tmp_path / "out"
    overrides = tiny_run_overrides(world, out, STEPS)
    mp.spawn(_rank_main, args=(2, _free_port(), overrides, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    results = [torch.load(tmp_path / f"result{r}.pt", weights_only=True) for r in range(2)]
    assert results[0] == results[1] and results[0]["steps"] == STEPS
    saved = load_file(str(out / "checkpoints" / f"step-{STEPS:08d}" / "weights.safetensors"))
    for name, tensor in saved.items():
        assert torch.equal(tensor, ranks[0][name]), name
    running = [n for n in ranks[0] if n.endswith("running_mean")]
    assert running and not torch.equal(ranks[0][running[0]], torch.zeros_like(ranks[0][running[0]]))
    assert (out / "model.safetensors").is_file()
