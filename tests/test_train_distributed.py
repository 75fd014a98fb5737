"""Data-parallel training through DistributedDataParallel: two gloo processes (as torchrun would start them)
stay in lockstep, train what one process trains on the same global batch, and resume bit-exactly.

One ``mp.spawn`` (module fixture) runs every two-rank training of this file in one process group, to pay
for the two interpreters' imports once."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from cocu.train.config import load_config
from cocu.train.trainer import train
from test_train_world import make_world, tiny_run_overrides

STEPS = 5
CLIP_STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Killed(Exception):
    pass


def _clip_overrides(world: dict, out) -> list[str]:
    """clip-tiny has no BatchNorm and no random draws in its forward, so two ranks compute exactly the
    single-process loss; ``cocu`` mode keeps the multi-label loss (eq. 3-4) in play."""
    return [
        *tiny_run_overrides(world, out, CLIP_STEPS),
        "model.config=clip-tiny",
        "optim.warmup=0",
        "optim.warmup_unit=steps",
        "optim.lr=1e-4",
        "train.log_every=1",
    ]


def _record_step_one(path: str):
    """An ``on_step`` callback saving the gradients and loss of step 1 into ``path``."""

    def record(info):
        if info.step == 1:
            grads = {n: p.grad.detach().clone() for n, p in info.module.named_parameters() if p.grad is not None}
            torch.save({"grads": grads, "loss": torch.tensor(info.loss)}, path)

    return record


def _rank_main(rank: int, world_size: int, port: int, world: dict, root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # the trainer joins this group instead of making its own
    try:

        def keep_state(info):
            if info.step == STEPS:
                state = {k: v.detach().clone() for k, v in info.module.state_dict().items()}
                torch.save(state, os.path.join(root, f"rank{rank}.pt"))

        result = train(load_config(None, tiny_run_overrides(world, f"{root}/full", STEPS)), on_step=keep_state)
        torch.save({"steps": result.steps, "loss": result.final_loss}, os.path.join(root, f"result{rank}.pt"))

        def kill_at_step_3(info):
            if info.step == 3:
                raise _Killed

        resumed = tiny_run_overrides(world, f"{root}/resumed", STEPS)
        try:
            train(load_config(None, resumed), on_step=kill_at_step_3)  # dies between checkpoints 2 and 4
        except _Killed:
            pass
        train(load_config(None, resumed))  # resume=auto: from step 2

        train(load_config(None, _clip_overrides(world, f"{root}/clip")), on_step=_record_step_one(f"{root}/clip{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Two-rank runs under ``root``: full/ (groupvit-tiny, STEPS), resumed/ (the same, killed after step 3
    and resumed), clip/ (clip-tiny, CLIP_STEPS); per-rank states and step-1 gradients beside them."""
    root = tmp_path_factory.mktemp("ddp")
    world = make_world(root / "world", n=16)
    mp.spawn(_rank_main, args=(2, _free_port(), world, str(root)), nprocs=2, join=True)
    return root, world


@pytest.mark.slow  # two fresh interpreters import torch + transformers and train four runs: ~40 s
def test_two_ddp_ranks_hold_identical_parameters_and_rank_0_state_is_what_is_saved(two_ranks):
    root, _ = two_ranks
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    params = [n for n in ranks[0] if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for name in params:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    results = [torch.load(root / f"result{r}.pt", weights_only=True) for r in range(2)]
    assert results[0] == results[1] and results[0]["steps"] == STEPS
    saved = load_file(str(root / "full" / "checkpoints" / f"step-{STEPS:08d}" / "weights.safetensors"))
    for name, tensor in saved.items():
        assert torch.equal(tensor, ranks[0][name]), name
    running = [n for n in ranks[0] if n.endswith("running_mean")]
    assert running and not torch.equal(ranks[0][running[0]], torch.zeros_like(ranks[0][running[0]]))
    final = load_file(str(root / "full" / "model.safetensors"))
    assert final and all(torch.isfinite(t).all() for t in final.values() if t.is_floating_point())


@pytest.mark.slow
def test_ddp_run_killed_and_resumed_ends_bit_identical_to_the_uninterrupted_ddp_run(two_ranks):
    root, _ = two_ranks
    expected = load_file(str(root / "full" / "model.safetensors"))
    got = load_file(str(root / "resumed" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    steps = [json.loads(line)["step"] for line in (root / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [STEPS]


@pytest.mark.slow
def test_ddp_training_equals_single_process_training_on_the_same_global_batch(two_ranks, tmp_path):
    root, world = two_ranks
    torch.set_num_threads(1)
    single = train(load_config(None, _clip_overrides(world, tmp_path / "single")), on_step=_record_step_one(
        str(tmp_path / "single.pt")))
    assert single.steps == CLIP_STEPS
    one = torch.load(tmp_path / "single.pt", weights_only=True)
    for rank in range(2):
        got = torch.load(root / f"clip{rank}.pt", weights_only=True)
        assert torch.allclose(got["loss"], one["loss"], rtol=1e-6, atol=0)
        assert got["grads"].keys() == one["grads"].keys() and "loss.multilabel_logit_scale" in got["grads"]
        for name, grad in one["grads"].items():  # DDP's average of the ranks' gradients = the global gradient
            assert torch.allclose(got["grads"][name], grad, rtol=1e-4, atol=1e-7), name

    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert losses(root / "clip") == pytest.approx(losses(tmp_path / "single"), rel=1e-5)
    expected, got = load_file(str(tmp_path / "single" / "model.safetensors")), load_file(str(root / "clip" / "model.safetensors"))
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-4, atol=1e-5), name
