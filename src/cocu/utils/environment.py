"""What a trained model's numbers depend on besides its config: library versions and the compute kernels.

Training is bit-for-bit repeatable on one machine (same seed, same results), but not across machines: the
CPU's vector instruction set picks torch's kernels (``torch.backends.cpu.get_cpu_capability()``: AVX-512
on one machine, AVX2 on another), their float rounding differs in the last bits, and a few hundred
optimiser steps turn that into a different model. Every training run therefore records this environment
(``train_result.json`` ``environment``), and the demo groups its runs by it (``results.json``
``train_environments``), so that two results that disagree can be told apart by where they were trained.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "transformers", "numpy", "faiss-cpu", "safetensors")
"""Distributions whose versions are recorded (one not installed is recorded as None)."""

KERNEL_KEYS = ("python", *PACKAGES, "cpu", "cpu_capability", "device", "threads")
"""The keys that can change the trained weights' float path (the thread count splits reductions)."""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name with its vendor, family and model numbers where Linux ``/proc/cpuinfo`` gives them
    (a virtual machine may show only "AMD EPYC": the family tells Zen 4 from Zen 5); elsewhere
    ``platform.processor()`` or the machine type."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    ids = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model")) if fields.get(key)]
    vendor = fields.get("vendor_id")
    if ids or vendor:
        return f"{name} ({' '.join(([vendor] if vendor else []) + ids)})"
    return name


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, CPU, torch's CPU kernel capability, the training device (a CUDA device by its name) and
    torch's thread count, as a JSON-able dict."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return {
        "python": platform.python_version(),
        **{name: _version(name) for name in PACKAGES},
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device_name,
        "threads": torch.get_num_threads(),
    }


def kernel_signature(env: dict[str, Any] | None) -> tuple:
    """The part of an environment that decides the float path (None: a run that recorded none)."""
    if not env:
        return ()
    return tuple(env.get(k) for k in KERNEL_KEYS)


def group_by_environment(runs: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Runs (name -> recorded environment, None where none was recorded) grouped by
    :func:`kernel_signature`, in order of first appearance: ``[{"environment": ..., "runs": [...]}]``."""
    groups: dict[tuple, dict[str, Any]] = {}
    for name, env in runs.items():
        key = kernel_signature(env)
        groups.setdefault(key, {"environment": env or None, "runs": []})["runs"].append(name)
    return list(groups.values())
