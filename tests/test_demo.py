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
import torch

from cocu.cli import main
from cocu.demo.metrics import aggregate_seeds, gap_closed, mean_std, score_concepts
from cocu.demo.pipeline import build_results, format_summary
from cocu.demo.report import Chip, ClassIoU, GalleryItem, OverlayItem, ReportData, render_report
from cocu.demo.concepts import PretrainSample
from cocu.demo.settings import ROW_NAMES, ROWS, TEACHER_DENSE, quick_settings, with_overrides
from cocu.demo.stages import StageRunner
from cocu.demo.steps import groupvit_overrides
from cocu.demo.studies import budget_curve, concept_rates, per_concept, top_l

ROW_KEYS = ("name", "recall", "precision", "sampled_recall", "sampled_precision", "sampled_coverage", "miou",
            "miou_lc", "miou_whole_image", "miou_group_bound", "top1")
EVAL_FIELDS = ("miou", "miou_lc", "miou_whole_image", "miou_group_bound", "top1")
QUICK_TRAINED = ("baseline", "cocu", "oracle")
# The CI-sized quick demo: --quick with a smaller world and fewer steps so that the test stays near a minute;
# budgets 1x and 2x of 3 steps and one extra teacher of 4 steps (the main one trains 8) exercise the studies.
QUICK_ARGS = ["--quick", "--teacher", "96", "--pretrain", "96", "--val", "6", "--classify", "1",
              "--clip-steps", "8", "--steps", "3", "--batch-size", "16", "--clip-batch-size", "16",
              "--budgets", "1,2", "--teacher-steps", "4"]
QUICK_STEPS, QUICK_BUDGETS, QUICK_TEACHERS = 3, (1, 2), (4, 8)
ARCHIVE_ROWS = ("lang", "vision", "vision-t2v", "cocu")


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


def test_budget_curve_averages_seeds_per_row_and_budget_and_measures_the_gap_closed():
    figs = {
        1: {"baseline": {0: {"miou": 0.1}, 1: {"miou": 0.3}}, "cocu": {0: {"miou": 0.3}, 1: {"miou": 0.3}},
            "oracle": {0: {"miou": 0.4}, 1: {"miou": 0.4}}},
        2: {"baseline": {0: {"miou": 0.5}}, "cocu": {0: {"miou": 0.4}}},
    }
    curve = budget_curve(figs, 160, ("baseline", "cocu", "oracle"))
    assert curve["budgets"] == [1, 2] and curve["base_steps"] == 160
    pts = {(p["row"], p["budget"]): p for p in curve["points"]}
    assert set(pts) == {("baseline", 1), ("cocu", 1), ("oracle", 1), ("baseline", 2), ("cocu", 2)}
    assert pts["baseline", 1]["miou"] == pytest.approx(0.2)
    assert pts["baseline", 1]["std"]["miou"] == pytest.approx(math.sqrt(0.02))
    assert pts["baseline", 1]["seeds"] == [0, 1] and pts["cocu", 2]["steps"] == 320
    assert pts["cocu", 1]["gap_closed"] == pytest.approx(0.5)  # (0.3 - 0.2) / (0.4 - 0.2)
    assert pts["oracle", 1]["gap_closed"] == pytest.approx(1.0) and pts["baseline", 1]["gap_closed"] == 0.0
    assert pts["cocu", 2]["gap_closed"] is None  # no oracle at budget 2
    assert pts["cocu", 2]["std"]["miou"] is None  # one seed: no spread


class _Vocab:
    def extract(self, caption: str) -> list[str]:
        return [w for w in caption.split() if w in ("sky", "dog", "grass")]


def test_concept_rates_count_caption_mentions_and_archive_hits_among_images_holding_each_class():
    from cocu.curation.archive import ArchiveRow

    samples = [
        PretrainSample("a", "a dog", {"sky": 0.5, "dog": 0.5}),
        PretrainSample("b", "sky and dog", {"sky": 0.7, "dog": 0.3}),
        PretrainSample("c", "a dog", {"sky": 1.0}),
    ]
    archive = {k: ArchiveRow(k, "", [], [], concepts, [1.0] * len(concepts), [0] * len(concepts))
               for k, concepts in (("a", ["sky", "dog"]), ("b", ["dog"]))}  # no row for "c": a miss
    rates = concept_rates(samples, archive, _Vocab(), ["sky", "dog", "grass"])
    third = pytest.approx(1 / 3)
    assert rates["sky"] == {"images": 3, "caption_mention_rate": third, "archive_recall": third}
    assert rates["dog"] == {"images": 2, "caption_mention_rate": 1.0, "archive_recall": 1.0}
    assert rates["grass"] == {"images": 0, "caption_mention_rate": None, "archive_recall": None}
    entries = per_concept(rates, {"sky": "stuff"}, {"baseline": {0: {"sky": 0.1}, 1: {"sky": 0.3}},
                                                     "cocu": {0: {"sky": 0.5}, 1: {"sky": None}}})
    sky = entries[0]
    assert sky["kind"] == "stuff" and sky["iou"] == {"baseline": pytest.approx(0.2), "cocu": 0.5}
    assert sky["gain"] == pytest.approx(0.3)
    assert entries[1]["kind"] == "?" and entries[1]["gain"] is None


def test_concept_summary_means_gains_per_kind_and_seed_and_correlates_gain_with_mention_rate():
    from cocu.demo.studies import concept_summary

    rates = {"sky": {"images": 4, "caption_mention_rate": 0.0, "archive_recall": 0.5},
             "sand": {"images": 4, "caption_mention_rate": 0.5, "archive_recall": 0.25},
             "dog": {"images": 4, "caption_mention_rate": 1.0, "archive_recall": 1.0}}
    iou = {"baseline": {0: {"sky": 0.1, "sand": 0.2, "dog": 0.5}, 1: {"sky": 0.3, "sand": 0.2, "dog": 0.5}},
           "cocu": {0: {"sky": 0.5, "sand": 0.3, "dog": 0.4}, 1: {"sky": 0.5, "sand": None, "dog": 0.6}}}
    entries = per_concept(rates, {"sky": "stuff", "sand": "stuff", "dog": "thing"}, iou)
    summary = concept_summary(entries, iou)
    stuff, thing = summary["by_kind"]["stuff"], summary["by_kind"]["thing"]
    assert summary["seeds"] == [0, 1] and stuff["classes"] == 2 and thing["classes"] == 1
    assert stuff["mean_caption_mention_rate"] == pytest.approx(0.25)
    assert stuff["mean_archive_recall"] == pytest.approx(0.375)
    # seed means: sky 0.5 - 0.2 = 0.3, sand 0.3 - 0.2 = 0.1 -> 0.2; per seed: (0.4 + 0.1) / 2 and sky's 0.2 alone
    assert stuff["mean_gain"] == pytest.approx(0.2)
    assert stuff["gain_per_seed"] == {"0": pytest.approx(0.25), "1": pytest.approx(0.2)}
    assert thing["mean_gain"] == pytest.approx(0.0) and thing["gain_per_seed"] == {"0": pytest.approx(-0.1),
                                                                                   "1": pytest.approx(0.1)}
    # gains 0.3, 0.1, 0.0 at mention rates 0, 0.5, 1: r = -0.15 / sqrt(0.5 * 0.04667)
    assert summary["gain_mention_correlation"] == pytest.approx(-0.15 / math.sqrt(0.5 * 0.14 / 3))
    assert concept_summary(entries[:2], iou)["gain_mention_correlation"] is None  # two classes: no r


def test_top_l_keeps_the_best_ranked_concepts_of_each_row():
    from cocu.curation.archive import ArchiveRow

    rows = {"a": ArchiveRow("a", "", [], [], ["x", "y", "z"], [3.0, 2.0, 1.0], [0, 1, 0])}
    assert top_l(rows, 2) == {"a": ["x", "y"]}


def test_groupvit_overrides_scale_the_steps_by_the_budget_and_carry_tau(tmp_path):
    settings = with_overrides(quick_settings(tmp_path), tau=0.5)
    cocu = next(r for r in ROWS if r.name == "cocu")
    over = groupvit_overrides(settings, cocu, tmp_path / "m", 0, budget=4)
    assert f"train.max_steps={4 * settings.groupvit.steps}" in over
    assert "text.tau=0.5" in over
    assert not any(o.startswith("text.tau") for o in groupvit_overrides(quick_settings(tmp_path), cocu, tmp_path, 0))


def test_demo_cli_sets_the_sampling_study_knobs_and_the_studies(tmp_path):
    from cocu.cli import build_parser
    from cocu.cli.demo import _settings

    argv = ["demo", "--out", str(tmp_path), "--quick", "--tau", "0.3", "--labels", "2", "--clusters", "4",
            "--budgets", "1,2,4", "--teacher-steps", "100,300", "--dense-method", "naclip"]
    s = _settings(build_parser("demo").parse_args(argv))
    assert (s.tau, s.num_labels, s.clusters, s.budgets, s.teacher_steps, s.dense_method) == (
        0.3, 2, 4, (1, 2, 4), (100, 300), "naclip")
    assert with_overrides(quick_settings(tmp_path), num_labels=2).clusters == 2  # clusters follow L by default


@pytest.mark.parametrize("flags, message", [(["--tau", "0"], "tau"), (["--clusters", "0"], "num_clusters"),
                                            (["--budgets", "1,1"], "budgets"), (["--jobs", "0"], "jobs")])
def test_demo_cli_rejects_bad_study_settings_before_any_work(tmp_path, capsys, flags, message):
    assert main(["demo", "--quick", "--out", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "world").exists()


def test_parallel_plan_starts_budget_one_then_the_dense_teacher_the_extra_teachers_and_larger_budgets(tmp_path):
    from cocu.demo.parallel import DENSE, TEACHER, TRAIN, Task, plan

    settings = with_overrides(quick_settings(tmp_path), seeds=(0, 1), budgets=(4, 2), teacher_steps=(100, 10, 30))
    tasks = plan(settings)
    b1 = [Task(TRAIN, r, s, 1) for s in (0, 1) for r in QUICK_TRAINED]
    # the main teacher trains 30 steps in the quick preset, so t30 is not an extra teacher
    assert settings.clip.steps == 30
    teachers = [Task(TEACHER, teacher_steps=t) for t in (10, 100)]
    larger = [Task(TRAIN, r, s, b) for b in (2, 4) for s in (0, 1) for r in QUICK_TRAINED]
    assert tasks == [*b1, Task(DENSE), *teachers, *larger]
    assert len({t.slug for t in tasks}) == len(tasks)  # one log file each


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
    """One CI-sized quick demo per session, its training runs two at a time in worker processes (--jobs 2;
    the rerun test below then shows that a serial run finds every stage cached)."""
    out = tmp_path_factory.getbasetemp() / "quick-demo"
    assert main(["demo", "--out", str(out), *QUICK_ARGS, "--jobs", "2"]) == 0
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
    names = ["baseline", "lang", "vision", "vision-t2v", "cocu", "oracle", TEACHER_DENSE]
    assert [r["name"] for r in res["rows"]] == names
    dense = res["rows"].pop()
    assert dense["trained"] is False and dense["method"] == "maskclip"
    assert all(dense[k] is None for k in ("recall", "precision", "sampled_recall"))
    assert all(0.0 <= dense[k] <= 1.0 for k in EVAL_FIELDS)  # the teacher CLIP segments without pre-training
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
              "train-baseline", "eval-baseline", "train-cocu", "train-oracle", "concepts", "report", "total",
              "train-cocu-x2", "eval-oracle-x2", "eval-teacher-dense", "concept-rates", "train-clip-t4",
              "curate-t4-cocu", "strength-clip", "strength-clip-t4"}
    assert stages <= set(res["timings"])
    assert all(t["seconds"] >= 0 for t in res["timings"].values())


@pytest.mark.slow
def test_quick_demo_evaluates_with_the_published_prompts_with_and_without_local_consistency(quick_demo):
    from cocu.text.prompts import subset_templates

    report = json.loads((quick_demo / "eval" / "cocu.json").read_text())
    assert report["seg"]["protocol"]["templates"] == ["a photo of a {}."]
    assert report["seg"]["protocol"]["local_consistency"] is False
    assert report["seg_lc"]["protocol"]["templates"] == ["a photo of a {}."]
    assert report["seg_lc"]["protocol"]["local_consistency"] is True
    assert report["cls"]["protocol"]["templates"] == list(subset_templates())
    row = next(r for r in json.loads((quick_demo / "results.json").read_text())["rows"] if r["name"] == "cocu")
    assert row["miou_lc"] == pytest.approx(report["seg_lc"]["miou"] / 100)


@pytest.mark.slow
def test_quick_demo_budget_curve_has_each_row_at_each_budget(quick_demo):
    curve = json.loads((quick_demo / "results.json").read_text())["budget_curve"]
    assert curve["budgets"] == list(QUICK_BUDGETS) and curve["base_steps"] == QUICK_STEPS
    points = {(p["row"], p["budget"]): p for p in curve["points"]}
    assert set(points) == {(r, b) for r in QUICK_TRAINED for b in QUICK_BUDGETS}
    for (name, budget), p in points.items():
        assert p["steps"] == budget * QUICK_STEPS and p["seeds"] == [0]
        for key in EVAL_FIELDS:
            assert 0.0 <= p[key] <= 1.0 and p["std"][key] is None  # one seed: no spread
        assert "gap_closed" in p
    assert (quick_demo / "models" / "groupvit-cocu-x2").is_dir()
    metrics = (quick_demo / "models" / "groupvit-cocu-x2" / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(line)["step"] for line in metrics if '"step"' in line) == 2 * QUICK_STEPS


@pytest.mark.slow
def test_quick_demo_per_concept_covers_every_class_of_the_world(quick_demo):
    res = json.loads((quick_demo / "results.json").read_text())
    classes = (quick_demo / "world" / "val" / "classes.txt").read_text().split()
    entries = res["per_concept"]
    assert [e["name"] for e in entries] == classes
    for e in entries:
        assert set(e["iou"]) == set(QUICK_TRAINED)
        for key in ("caption_mention_rate", "archive_recall"):
            assert (e[key] is None) == (e["images"] == 0)
            assert e[key] is None or 0.0 <= e[key] <= 1.0
        if e["iou"]["cocu"] is not None and e["iou"]["baseline"] is not None:
            assert e["gain"] == pytest.approx(e["iou"]["cocu"] - e["iou"]["baseline"])
    assert sum(e["images"] for e in entries) > 0


@pytest.mark.slow
def test_quick_demo_per_concept_summary_counts_every_class_by_kind(quick_demo):
    res = json.loads((quick_demo / "results.json").read_text())
    summary = res["per_concept_summary"]
    counted = sum(k["classes"] for k in summary["by_kind"].values())
    assert counted == len(res["per_concept"]) and set(summary["by_kind"]) <= {"stuff", "thing"}
    assert summary["seeds"] == [0]


@pytest.mark.slow
def test_quick_demo_teacher_strength_has_each_teacher_and_curated_row(quick_demo):
    teachers = json.loads((quick_demo / "results.json").read_text())["teacher_strength"]
    assert [t["steps"] for t in teachers] == list(QUICK_TEACHERS)
    assert [t["main"] for t in teachers] == [False, True]
    for t in teachers:
        assert 0.0 <= t["top1"] <= 1.0
        assert list(t["rows"]) == list(ARCHIVE_ROWS)
        for name, stats in t["rows"].items():
            for key in ("recall", "precision", "top_l_recall", "top_l_precision", "sampled_recall"):
                assert 0.0 <= stats[key] <= 1.0, (t["steps"], name, key)
            if name != "cocu":  # naive sampling feeds exactly the top-L concepts
                assert stats["top_l_recall"] == pytest.approx(stats["sampled_recall"])
    assert list((quick_demo / "curation" / "t4" / "cocu" / "curation").glob("archive-*.parquet"))


@pytest.mark.slow
def test_quick_demo_groups_every_trained_model_under_the_one_environment_that_trained_it(quick_demo):
    res = json.loads((quick_demo / "results.json").read_text())
    assert res["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    groups = res["train_environments"]
    assert len(groups) == 1, groups  # every run on this machine, one thread each
    runs = groups[0]["runs"]
    assert len(runs) == len(set(runs)) == len(QUICK_TEACHERS) + len(QUICK_BUDGETS) * len(QUICK_TRAINED)
    assert {"train-clip", "train-clip-t4", "train-cocu", "train-oracle-x2"} <= set(runs)
    assert groups[0]["environment"]["threads"] == 1 and groups[0]["environment"]["device"] == "cpu"
    assert all(t["teacher_images"] == 96 for t in res["teacher_strength"])
    assert "kernels" in (quick_demo / "report.html").read_text("utf-8")


@pytest.mark.slow
def test_quick_demo_report_is_self_contained_with_tables_and_pictures(quick_demo):
    page = assert_self_contained((quick_demo / "report.html").read_text("utf-8"))
    assert page.count("table") >= 3 + 3  # + budget curve, per concept, teacher strength
    shown = len(QUICK_TRAINED) + 1  # + teacher-dense
    assert page.count("img") >= 1 + 4 + 2 * (2 + shown) + 3  # loss, gallery, overlays, the studies' figures
    alts = [a.get("alt") for t, a in page.tags if t == "img"]
    for alt in ("mIoU against training budget", "IoU gain against caption mention rate",
                "curation ablation against teacher strength"):
        assert alt in alts
    text = "".join(page.text)
    for name in (*ROW_NAMES, TEACHER_DENSE):
        assert name in text


@pytest.mark.slow
def test_quick_demo_jobs_leave_one_log_per_task_with_its_training_progress(quick_demo):
    logs = sorted(p.name for p in (quick_demo / "logs").iterdir())
    trained = [f"train-{r}-seed0-x{b}.log" for r in QUICK_TRAINED for b in QUICK_BUDGETS]
    assert logs == sorted([*trained, "teacher-dense.log", "teacher-t4.log"])
    text = (quick_demo / "logs" / "train-cocu-seed0-x2.log").read_text("utf-8")
    assert f"{2 * QUICK_STEPS}/{2 * QUICK_STEPS}" in text and "stage train-cocu-x2: finished" in text


@pytest.mark.slow
def test_quick_demo_collect_only_reports_the_finished_runs_and_lists_the_missing_ones(quick_demo):
    models = sorted(p.name for p in (quick_demo / "models").iterdir())
    assert main(["demo", "--out", str(quick_demo), *QUICK_ARGS[:-4], "--budgets", "1,2,4",
                 "--teacher-steps", "4,6", "--collect-only"]) == 0
    res = json.loads((quick_demo / "results.json").read_text())
    assert res["missing"] == ["train-baseline-x4", "train-cocu-x4", "train-oracle-x4", "train-clip-t6"]
    assert sorted({p["budget"] for p in res["budget_curve"]["points"]}) == list(QUICK_BUDGETS)
    assert [t["steps"] for t in res["teacher_strength"]] == list(QUICK_TEACHERS)
    assert sorted(p.name for p in (quick_demo / "models").iterdir()) == models  # nothing trained


def test_demo_collect_only_on_an_empty_folder_says_which_stage_has_not_run(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), *QUICK_ARGS, "--collect-only"]) == 2
    assert "stage synth has not run" in capsys.readouterr().err
    assert not (tmp_path / "d" / "world").exists()


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
