"""The training environment record: what it holds, how runs are grouped by it."""

from __future__ import annotations

import torch

from cocu.utils.environment import KERNEL_KEYS, cpu_model, environment, group_by_environment, kernel_signature


def test_environment_names_versions_cpu_kernels_device_and_threads():
    env = environment()
    assert set(KERNEL_KEYS) <= set(env)
    assert env["torch"] == torch.__version__
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads()
    assert env["faiss-cpu"] is not None and env["transformers"] is not None


def test_cpu_model_names_the_first_processor_with_vendor_family_and_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                    "model name\t: AMD EPYC\nflags\t: avx2\n\nprocessor\t: 1\nmodel name\t: Other\n")
    assert cpu_model(info) == "AMD EPYC (AuthenticAMD family 26 model 2)"
    (tmp_path / "bare").write_text("model name\t: Test CPU 9000\n")
    assert cpu_model(tmp_path / "bare") == "Test CPU 9000"
    assert cpu_model(tmp_path / "absent")  # falls back to the platform's name, never raises


def test_runs_group_by_kernels_and_versions_not_by_name():
    a = {**environment(), "cpu_capability": "AVX512"}
    b = {**a, "cpu_capability": "AVX2"}
    groups = group_by_environment({"train-clip": a, "train-baseline": dict(a), "train-cocu": b, "train-old": None})
    assert [g["runs"] for g in groups] == [["train-clip", "train-baseline"], ["train-cocu"], ["train-old"]]
    assert groups[1]["environment"]["cpu_capability"] == "AVX2" and groups[2]["environment"] is None
    assert kernel_signature(a) != kernel_signature(b) and kernel_signature(None) == ()
    assert kernel_signature({**a, "threads": a["threads"] + 1}) != kernel_signature(a)
