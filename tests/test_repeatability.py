"""scripts/repeatability.py: the demo twice in one environment gives the same figures; the comparison table."""

from __future__ import annotations

import json

import pytest

TINY = ["--teacher", "48", "--pretrain", "48", "--val", "4", "--classify", "1", "--clip-steps", "3",
        "--steps", "2", "--batch-size", "16", "--clip-batch-size", "16", "--rows", "cocu", "--budgets", "1"]


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("repeatability")


def _results(miou: float, top1: float) -> dict:
    return {"rows": [{"name": "cocu", "miou": miou, "top1": top1, "recall": 0.5}], "train_environments": []}


def test_compare_names_the_figures_the_third_run_moved(script):
    report = script.compare({"a": _results(0.1, 0.2), "b": _results(0.1, 0.2), "c": _results(0.12, 0.2)})
    assert report["a_equals_b"] is True and report["c_moved"] == ["cocu.miou"]
    assert report["rows"]["cocu"]["miou"] == {"a": 0.1, "b": 0.1, "c": 0.12}
    text = script.table(report)
    assert "| cocu | miou | 10.00 | 10.00 | 12.00 |" in text and "| cocu | miou_lc |" not in text
    assert "equal in every figure: yes; c moved 1 figure(s)" in text
    assert script.compare({"a": _results(0.1, 0.2), "b": _results(0.1, 0.3), "c": _results(0.1, 0.2)})[
        "a_equals_b"] is False


@pytest.mark.slow
def test_two_demos_in_one_environment_give_identical_figures(script, tmp_path, capsys):
    assert script.main(["--out", str(tmp_path / "r"), "--capability", "default", "--", *TINY]) == 0
    report = json.loads((tmp_path / "r" / "repeatability.json").read_text())
    assert report["a_equals_b"] is True, report["rows"]
    assert report["rows"]["cocu"]["miou"]["a"] is not None
    caps = {name: {e["cpu_capability"] for e in envs} for name, envs in report["train_environments"].items()}
    assert caps["c"] == {"DEFAULT"} and caps["a"] == caps["b"] != caps["c"]
    assert "equal in every figure: yes" in capsys.readouterr().out
