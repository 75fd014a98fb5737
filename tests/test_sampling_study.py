"""scripts/sampling_study.py: one demo folder per grid point, a JSON entry and a table row per point."""

from __future__ import annotations

import json

import pytest

TINY = ["--quick", "--teacher", "64", "--pretrain", "64", "--val", "4", "--classify", "1", "--clip-steps", "4",
        "--steps", "2", "--batch-size", "16", "--clip-batch-size", "16"]


@pytest.fixture(scope="module")
def study(load_script):
    return load_script("sampling_study")


def test_sampling_study_refuses_an_unknown_grid_point_before_any_work(study, tmp_path):
    with pytest.raises(SystemExit):
        study.main(["--out", str(tmp_path / "s"), "--points", "default,tau9"])
    assert not (tmp_path / "s").exists()


def test_sampling_study_table_prints_percent_and_the_default_tau(study):
    entry = {"point": "k4", "tau": None, "labels": 3, "clusters": 4, "seeds": [0, 1], "sampled_recall": 0.25,
             "sampled_precision": 0.5, "sampled_coverage": 0.625, "recall": 0.75, "miou": 0.081, "miou_std": None}
    row = study.table([entry]).splitlines()[2]
    assert row == "| k4 | 0.1 (default) | 3 | 4 | 25.0 | 50.0 | 62.5 | 75.0 | 8.1 | - | 0,1 |"


def test_sampling_study_warns_when_its_points_were_trained_in_different_environments(study):
    here = {"cpu": "A", "cpu_capability": "AVX512", "torch": "2.13.0", "threads": 1}
    entries = [{"point": p, "train_environments": [{"environment": env, "runs": ["train-cocu"]}]}
               for p, env in (("default", here), ("k4", dict(here)))]
    assert study.environments_note(entries) == ""
    entries[1]["train_environments"][0]["environment"] = {**here, "cpu_capability": "AVX2"}
    assert "2 recorded environment(s); 0 point(s)" in study.environments_note(entries)
    entries[1]["train_environments"] = []  # an entry from before environments were recorded
    assert "1 recorded environment(s); 1 point(s)" in study.environments_note(entries)


@pytest.mark.slow
def test_sampling_study_runs_each_point_as_a_cocu_only_demo_with_its_flags(study, tmp_path, capsys):
    out = tmp_path / "study"
    assert study.main(["--out", str(out), "--points", "k4", "--", *TINY]) == 0
    entries = json.loads((out / "sampling_study.json").read_text())
    assert [e["point"] for e in entries] == ["k4"]
    e = entries[0]
    assert (e["labels"], e["clusters"], e["seeds"]) == (3, 4, [0])
    assert 0 <= e["sampled_recall"] <= e["sampled_coverage"] <= 1 and e["miou"] is not None
    results = json.loads((out / "k4" / "results.json").read_text())
    trained = [r["name"] for r in results["rows"] if r["trained"]]
    assert trained == ["cocu"] and results["settings"]["num_clusters"] == 4
    assert "| k4 |" in (out / "sampling_study.md").read_text() and "| k4 |" in capsys.readouterr().out
    assert len(e["train_environments"]) == 1 and "environment" not in (out / "sampling_study.md").read_text()
