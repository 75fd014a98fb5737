"""`scripts/reproduce_groupvit.sh` on a fixture data root holding two benchmarks (and one damaged one)
with a random-weight GroupViT: one table with mIoU, the published number and the difference; absent
benchmarks are "missing", not errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cocu.evaluation.published import published_miou, read_rows
from test_eval_seg import _label, make_context, make_voc, tiny_model_dir  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce_groupvit.sh"
FAST = ["--", "--short-side", "32", "--crop", "48"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def _row(table: str, name: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.split()[:1] == [name])


def test_reproduce_script_prints_one_table_with_missing_benchmarks_marked(tiny_model_dir, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    make_voc(data)
    make_context(data)
    _label(data / "VOCdevkit" / "VOC2010" / "SegmentationClassContext" / "2008_000002.png", [0, 99], 30, 22)
    out = tmp_path / "results"
    proc = _run("--out", str(out), str(data), str(tiny_model_dir), *FAST)
    assert proc.returncode == 1, proc.stderr  # the damaged Context failed; the rest is reported
    table = proc.stdout
    assert "published: nvidia/groupvit-gcc-yfcc" in table
    voc = json.loads((out / "voc.json").read_text())
    assert voc["protocol"]["image_mean"] == [0.485, 0.456, 0.406]  # the reference normalisation
    assert voc["protocol"]["templates"] == ["a photo of a {}."]
    assert _row(table, "voc")[:4] == ["voc", f"{voc['miou']:.2f}", "52.30", f"{voc['miou'] - 52.3:+.2f}"]
    assert _row(table, "context")[:3] == ["context", "failed", "22.40"]
    assert "label value 99" in table
    for name, published in [("coco-object", "24.30"), ("imagenet-s300", "23.50"), ("ade20k", "10.40")]:
        assert _row(table, name)[1:3] == ["missing", published]
        assert not (out / f"{name}.json").exists()


def test_comparison_uses_the_papers_lc_rows_for_a_local_consistency_result(tmp_path):
    (tmp_path / "voc.json").write_text(json.dumps({"miou": 50.0, "protocol": {"local_consistency": True}}))
    (tmp_path / "context.json").write_text(json.dumps({"miou": 20.0, "protocol": {"local_consistency": False}}))
    rows = {r.benchmark: r for r in read_rows(tmp_path, "cocu-paper")}
    assert (rows["voc"].published, rows["voc"].difference) == (51.4, -1.4)
    assert (rows["context"].published, rows["context"].difference) == (22.8, -2.8)
    assert rows["ade20k"].status == "missing" and rows["ade20k"].published == 12.0
    assert published_miou("groupvit-gcc-yfcc", "cityscapes", local_consistency=True) is None


def test_reproduce_script_usage_errors(tmp_path):
    assert _run(str(tmp_path)).returncode == 2
    assert _run(str(tmp_path / "absent"), "model").returncode == 2
    proc = _run("--reference", "nope", str(tmp_path), "model")
    assert proc.returncode == 2 and "unknown reference 'nope'" in proc.stderr
