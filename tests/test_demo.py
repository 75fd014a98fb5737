"""`cocu demo`: the numbers, the caching, the report page, and the quick demo end to end."""

from __future__ import annotations

import json
import math
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cocu.cli import main
from cocu.demo.metrics import aggregate_seeds, gap_closed, mean_std, score_concepts
from cocu.demo.pipeline import build_results, format_summary
from cocu.demo.report import Chip, ClassIoU, GalleryItem, OverlayItem, ReportData, render_report
from cocu.demo.settings import ROW_NAMES, quick_settings, with_overrides
from cocu.demo.stages import StageRunner

ROW_KEYS = ("name", "recall", "precision", "sampled_recall", "sampled_precision", "sampled_coverage", "miou",
            "miou_whole_image", "miou_group_bound", "top1")
EVAL_FIELDS = ("miou", "miou_whole_image", "miou_group_bound", "top1")
QUICK_TRAINED = ("baseline", "cocu", "oracle")
# The CI-sized quick demo: --quick with a smaller world and fewer steps so that the test stays near a minute.
QUICK_ARGS = ["--quick", "--teacher", "96", "--pretrain", "96", "--val", "6", "--classify", "1",
              "--clip-steps", "8", "--steps", "5", "--batch-size", "16", "--clip-batch-size", "16"]


# ---------------------------------------------------------------- numbers


def test_score_concepts_micro_averages_hits_over_all_pairs():
    truth = {"a": ["sky", "grass", "dog"], "b": ["sea"]}
    pred = {"a": ["dog", "cat"], "b": ["sea", "sky", "sand"]}
    s = score_concepts(pred, truth)
    assert (s.hits, s.n_true, s.n_predicted, s.missing) == (2, 4, 5, 0)
    assert s.recall == pytest.approx(2 / 4)
    assert s.precision == pytest.approx(2 / 5)


def test_score_concepts_counts_a_missing_key_as_an_empty_prediction():
    truth = {"a": ["sky", "grass"], "b": ["sea"]}
    s = score_concepts({"a": ["sky"]}, truth)
    assert s.missing == 1
    assert s.recall == pytest.approx(1 / 3)
    assert s.precision == pytest.approx(1.0)


def test_score_concepts_pools_several_draws():
    truth = {"a": ["sky", "grass"]}
    s = score_concepts([{"a": ["sky"]}, {"a": ["dog"]}], truth)
    assert (s.hits, s.n_true, s.n_predicted) == (1, 4, 2)
    assert s.recall == pytest.approx(0.25)
    assert s.precision == pytest.approx(0.5)


def test_score_concepts_is_undefined_without_predictions_or_truth():
    s = score_concepts({"a": []}, {"a": []})
    assert s.recall is None and s.precision is None


def test_gap_closed_is_the_fraction_of_the_baseline_to_oracle_gap():
    assert gap_closed(0.2, 0.3, 0.4) == pytest.approx(0.5)
    assert gap_closed(0.2, 0.1, 0.4) == pytest.approx(-0.5)
    assert gap_closed(0.2, 0.3, 0.2) is None  # no gap to close
    assert gap_closed(0.3, 0.3, 0.2) is None  # the oracle is worse
    assert gap_closed(None, 0.3, 0.4) is None


def test_mean_std_ignores_nulls_and_needs_two_values_for_a_spread():
    assert mean_std([]) == (None, None)
    assert mean_std([None, 0.5]) == (0.5, None)
    mean, std = mean_std([0.1, 0.3])
    assert mean == pytest.approx(0.2)
    assert std == pytest.approx(math.sqrt(0.02))


def test_build_results_carries_per_seed_values_mean_std_and_gap(tmp_path):
    settings = with_overrides(quick_settings(tmp_path), seeds=(0, 1))
    concepts = {"rows": {n: {"recall": 0.5, "precision": 0.6, "sampled_recall": 0.3, "sampled_precision": 0.7}
                         for n in ROW_NAMES}}
    miou = {"baseline": (0.10, 0.20), "cocu": (0.20, 0.30), "oracle": (0.30, 0.40)}
    figures = {n: {s: {"miou": v[s], "miou_whole_image": 0.1, "miou_group_bound": 0.5, "pixel_acc": 0.4,
                       "top1": 0.2 + s / 10, "top5": 0.9} for s in (0, 1)} for n, v in miou.items()}
    res = build_results(settings, concepts, figures, {"synth": {"seconds": 1.0, "cached": False}}, {})
    rows = {r["name"]: r for r in res["rows"]}
    assert [r["name"] for r in res["rows"]] == list(ROW_NAMES)
    assert rows["cocu"]["miou"] == pytest.approx(0.25)
    assert rows["cocu"]["std"]["miou"] == pytest.approx(math.sqrt(0.005))
    assert [p["seed"] for p in rows["cocu"]["per_seed"]] == [0, 1]
    assert rows["cocu"]["top1"] == pytest.approx(0.25)
    assert rows["lang"]["miou"] is None and rows["lang"]["trained"] is False and rows["lang"]["per_seed"] == []
    assert rows["lang"]["recall"] == 0.5
    assert res["gap_closed"] == pytest.approx(0.5)
    assert [g["gap_closed"] for g in res["gap_closed_per_seed"]] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert res["seed"] == 0 and res["seeds"] == [0, 1]
    assert "cocu" in format_summary(res)


def test_aggregate_seeds_keeps_null_metrics_null():
    agg = aggregate_seeds([{"miou": 0.1, "top1": None}], ("miou", "top1"))
    assert agg["miou"] == pytest.approx(0.1) and agg["top1"] is None and agg["std"] == {"miou": None, "top1": None}


# ---------------------------------------------------------------- caching


def test_stage_runner_skips_a_finished_stage_and_reruns_on_change_missing_output_or_force(tmp_path):
    calls = []

    def stage(tag):
        def fn():
            calls.append(tag)
            (tmp_path / "out.txt").write_text(tag)
            return {"tag": tag}
        return fn

    out = [tmp_path / "out.txt"]
    first = StageRunner(tmp_path).run("s", {"a": 1}, stage("1"), out)
    again = StageRunner(tmp_path).run("s", {"a": 1}, stage("2"), out)
    assert calls == ["1"] and not first.cached and again.cached and again.info == {"tag": "1"}
    StageRunner(tmp_path).run("s", {"a": 2}, stage("3"), out)  # settings changed
    (tmp_path / "out.txt").unlink()
    StageRunner(tmp_path).run("s", {"a": 2}, stage("4"), out)  # output missing
    StageRunner(tmp_path, force=True).run("s", {"a": 2}, stage("5"), out)
    assert calls == ["1", "3", "4", "5"]
    assert (tmp_path / "out.txt").read_text() == "5"


def test_stage_runner_leaves_no_marker_when_a_stage_fails(tmp_path):
    runner = StageRunner(tmp_path)

    def boom():
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        runner.run("s", {}, boom, [tmp_path / "x"])
    assert not runner.marker_path("s").exists()


def test_demo_cli_rejects_unknown_rows_and_bad_budgets(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path), "--rows", "baseline,bogus"])
    assert main(["demo", "--quick", "--out", str(tmp_path), "--batch-size", "1"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert not (tmp_path / "world").exists()


def test_demo_cli_reports_an_output_path_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert main(["demo", "--quick", "--out", str(target)]) == 2
    assert "error" in capsys.readouterr().err
    assert target.read_text() == "not a folder"


# ---------------------------------------------------------------- report page


class _Page(HTMLParser):
    """Collects tags, attributes and text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)


def parse_page(html_text: str) -> _Page:
    page = _Page()
    page.feed(html_text)
    return page


def assert_self_contained(html_text: str) -> _Page:
    page = parse_page(html_text)
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe"), f"<{tag}> in a self-contained page"
        for name in ("src", "href"):
            value = attrs.get(name)
            if value is not None:
                assert not re.match(r"(?i)\s*(https?:)?//", value), f"external URL in <{tag} {name}={value[:60]}>"
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    assert not re.search(r"(?i)url\(\s*['\"]?(https?:)?//", html_text)
    return page


def _png() -> bytes:
    from cocu.demo.figures import png_bytes

    return png_bytes(np.zeros((4, 4, 3), dtype=np.uint8))


def test_render_report_is_self_contained_and_escapes_captions():
    results = {
        "rows": [{"name": n, "recall": 0.5, "precision": 0.5, "sampled_recall": 0.25, "sampled_precision": 0.75,
                  "miou": 0.3 if n == "cocu" else None, "miou_whole_image": None, "miou_group_bound": None,
                  "top1": None, "std": {}} for n in ROW_NAMES],
        "gap_closed": None, "settings": {"seeds": [0], "num_labels": 3}, "timings": {"synth": {"seconds": 1.5}},
    }
    data = ReportData(
        results=results,
        loss_png=_png(),
        gallery=[GalleryItem("k", _png(), "a <b>dog</b> & http://x.org", [Chip("dog", "hit")],
                             [Chip("grass", "hit", "1.20 · c0", True), Chip("cat", "false")],
                             [Chip("grass", "found", "40%"), Chip("sky", "missed", "10%")])],
        overlays=[OverlayItem("v", _png(), _png(), {"baseline": _png(), "cocu": _png()})],
        legend=[("sky", (1, 2, 3))],
        class_iou=[ClassIoU("sky", "stuff", {"cocu": 0.5}), ClassIoU("dog", "thing", {"cocu": None})],
    )
    html_text = render_report(data)
    page = assert_self_contained(html_text)
    text = "".join(page.text)
    assert "a <b>dog</b> & http://x.org" in text  # shown as text, not markup
    assert "&lt;b&gt;dog&lt;/b&gt;" in html_text
    assert page.count("table") == 3 and page.count("img") == 1 + 1 + 4  # loss, gallery, overlay row
    assert "30.0" in text and "mean over stuff" in text


# ---------------------------------------------------------------- the quick demo, end to end


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> Path:
    """One CI-sized quick demo per session (a second request is a fully cached rerun)."""
    out = tmp_path_factory.getbasetemp() / "quick-demo"
    assert main(["demo", "--out", str(out), *QUICK_ARGS]) == 0
    return out


@pytest.mark.slow
def test_quick_demo_writes_the_layout_and_loadable_models(quick_demo):
    from transformers import CLIPModel, GroupViTModel

    out = quick_demo
    for path in ("world/world.json", "world/pretrain", "world/val/classes.txt", "world/classify", "results.json",
                 "report.html", "concepts.json"):
        assert (out / path).exists(), path
    CLIPModel.from_pretrained(out / "models" / "clip")
    for name in QUICK_TRAINED:
        GroupViTModel.from_pretrained(out / "models" / f"groupvit-{name}")
        assert (out / "eval" / f"{name}.json").is_file()
        assert (out / "models" / f"groupvit-{name}" / "metrics.jsonl").is_file()
    for name in ("lang", "vision", "vision-t2v", "cocu"):
        assert list((out / "curation" / name / "curation").glob("archive-*.parquet")), name
    for name in ("lang", "vision", "vision-t2v"):
        assert not (out / "models" / f"groupvit-{name}").exists()


@pytest.mark.slow
def test_quick_demo_results_json_has_every_row_key_and_nulls_where_not_trained(quick_demo):
    res = json.loads((quick_demo / "results.json").read_text())
    assert [r["name"] for r in res["rows"]] == ["baseline", "lang", "vision", "vision-t2v", "cocu", "oracle"]
    for r in res["rows"]:
        for key in ROW_KEYS:
            assert key in r, (r["name"], key)
        for key in ("recall", "precision", "sampled_recall", "sampled_precision", "sampled_coverage"):
            assert 0.0 <= r[key] <= 1.0, (r["name"], key)
        assert r["sampled_coverage"] >= r["sampled_recall"] - 1e-9  # ten steps show at least what one does
        trained = r["name"] in QUICK_TRAINED
        assert r["trained"] is trained
        for key in EVAL_FIELDS:
            assert (r[key] is not None) is trained, (r["name"], key)
            if trained:
                assert 0.0 <= r[key] <= 1.0
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["oracle"]["recall"] == 1.0 and rows["oracle"]["precision"] == 1.0
    assert rows["cocu"]["recall"] >= rows["baseline"]["recall"]  # the archive holds the caption's own concepts
    assert res["seed"] == 0
    assert res["gap_closed"] is None or isinstance(res["gap_closed"], float)
    assert res["settings"]["quick"] is True
    stages = {"synth", "train-clip", "eval-clip", "curate-lang", "curate-vision", "curate-vision-t2v", "curate-cocu",
              "train-baseline", "eval-baseline", "train-cocu", "train-oracle", "concepts", "report", "total"}
    assert stages <= set(res["timings"])
    assert all(t["seconds"] >= 0 for t in res["timings"].values())


@pytest.mark.slow
def test_quick_demo_report_is_self_contained_with_tables_and_pictures(quick_demo):
    page = assert_self_contained((quick_demo / "report.html").read_text("utf-8"))
    assert page.count("table") >= 3
    assert page.count("img") >= 1 + 4 + 2 * (2 + len(QUICK_TRAINED))  # loss curves, gallery, overlays
    text = "".join(page.text)
    for name in ROW_NAMES:
        assert name in text


@pytest.mark.slow
def test_quick_demo_rerun_skips_every_finished_stage(quick_demo, capsys):
    start = time.perf_counter()
    assert main(["demo", "--out", str(quick_demo), *QUICK_ARGS]) == 0
    elapsed = time.perf_counter() - start
    res = json.loads((quick_demo / "results.json").read_text())
    ran = [name for name, t in res["timings"].items() if name not in ("report", "total") and not t["cached"]]
    assert ran == []
    assert elapsed < 60
    assert "report:" in capsys.readouterr().out
