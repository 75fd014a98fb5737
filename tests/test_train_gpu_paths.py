"""The trainer's CUDA-only branches, run on CPU: the backend choice, and the CUDA generator's state through a
checkpoint (torch.cuda's get/set replaced by fakes); the CUDA run itself is scripts/gpu_check.sh."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from cocu.train.checkpoint import load_checkpoint, save_checkpoint
from cocu.train.distributed import DistContext, backend_for
from cocu.train.trainer import _restore_rng, _rng_rows

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_nccl_on_cuda_and_gloo_on_cpu():
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for(torch.device("cpu")) == "gloo"


def test_cuda_generator_state_is_saved_per_rank_and_restored_on_its_device(tmp_path, monkeypatch):
    cuda_state = torch.arange(16, dtype=torch.uint8)
    asked, restored = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": asked.append(device) or cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    ctx = DistContext(rank=0, world=1, local_rank=0, device=torch.device("cuda", 0), owns_group=False)
    rows = _rng_rows(ctx)
    assert set(rows) == {"torch", "cuda"} and torch.equal(rows["cuda"], cuda_state[None])
    module = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(module.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = save_checkpoint(tmp_path, 1, 0, module, optimizer, scheduler, rows, keep=1)
    state = load_checkpoint(path, module, optimizer, scheduler, torch.device("cpu"))
    _restore_rng(state.rng, ctx)
    assert asked == [torch.device("cuda", 0)]
    assert len(restored) == 1 and torch.equal(restored[0][0], cuda_state) and restored[0][1] == torch.device("cuda", 0)


def test_gpu_check_script_parses_and_stops_with_a_clear_message_without_cuda(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "work")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert "CUDA is not available" in done.stderr and "--cpu-dry-run" in done.stderr
