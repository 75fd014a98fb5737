"""The synthetic semantic-gap world: determinism, layouts, truth consistency, caption statistics, CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocu.cli import main
from cocu.curation.vocab import Vocabulary
from cocu.data.reader import iter_samples
from cocu.synth.concepts import CONCEPTS, STUFF_NAMES, THING_NAMES, class_names, concept, vocabulary_lines
from cocu.synth.contact import PALETTE
from cocu.synth.scene import SCENE_TYPES
from cocu.synth import world as world_module
from cocu.synth.stats import SplitStats
from cocu.synth.world import WorldConfig, generate_world, pixel_fractions, render_sample

TINY = dict(teacher=16, pretrain=16, val=16, classify=2, contact_sheet=4)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "world"
    stats = generate_world(out, WorldConfig(seed=0, **TINY))
    return out, stats


@pytest.fixture(scope="module")
def sample_stats() -> SplitStats:
    """Statistics of 240 pretrain images drawn in memory (no files)."""
    cfg = WorldConfig(seed=3)
    stats = SplitStats()
    for i in range(240):
        s = render_sample(cfg, "pretrain", i)
        stats.add(s.meta(), s.caption.text)
    return stats


def test_same_seed_gives_identical_bytes_and_another_seed_different_bytes(world, tmp_path):
    out, _ = world
    again = tmp_path / "again"
    other = tmp_path / "other"
    generate_world(again, WorldConfig(seed=0, **TINY))
    generate_world(other, WorldConfig(seed=1, **TINY))
    first, second, third = _files(out), _files(again), _files(other)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name
    assert first.keys() == third.keys()
    for name in ("teacher/teacher-00000.tar", "pretrain/pretrain-00000.tar", "val/JPEGImages/val-000000.jpg",
                 "val/SegmentationClass/val-000003.png", "contact_sheet.png"):
        assert first[name] != third[name], name


def test_images_do_not_depend_on_split_sizes_or_worker_count(tmp_path):
    small = WorldConfig(seed=5, teacher=0, pretrain=8, val=0, classify=0, contact_sheet=0)
    big = WorldConfig(seed=5, teacher=0, pretrain=70, val=0, classify=0, contact_sheet=0, workers=2)
    generate_world(tmp_path / "small", small)
    generate_world(tmp_path / "big", big)
    a = {s.key: (s.image_bytes, s.caption) for s in iter_samples(tmp_path / "small" / "pretrain")}
    b = {s.key: (s.image_bytes, s.caption) for s in iter_samples(tmp_path / "big" / "pretrain")}
    assert len(a) == 8 and len(b) == 70
    for key, value in a.items():
        assert b[key] == value
    serial = WorldConfig(seed=5, teacher=0, pretrain=70, val=0, classify=0, contact_sheet=0)
    generate_world(tmp_path / "serial", serial)
    assert (tmp_path / "serial/pretrain/pretrain-00000.tar").read_bytes() == \
        (tmp_path / "big/pretrain/pretrain-00000.tar").read_bytes()


def test_output_layout_voc_classify_world_json_and_contact_sheet(world):
    out, stats = world
    for name in ("teacher/teacher-00000.tar", "pretrain/pretrain-00000.tar", "world.json", "vocab.txt",
                 "contact_sheet.png", "val/classes.txt", "val/ImageSets/Segmentation/val.txt", "val/meta.jsonl",
                 "classify/classes.txt"):
        assert (out / name).is_file(), name
    keys = (out / "val/ImageSets/Segmentation/val.txt").read_text().split()
    assert keys == [f"val-{i:06d}" for i in range(16)]
    assert (out / "val/classes.txt").read_text().splitlines() == class_names()
    for key in keys:
        with Image.open(out / "val/JPEGImages" / f"{key}.jpg") as img:
            assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"
        with Image.open(out / "val/SegmentationClass" / f"{key}.png") as lab:
            assert lab.mode == "L" and lab.size == (64, 64)
            assert np.asarray(lab).max() < len(CONCEPTS)
    assert (out / "classify/classes.txt").read_text().splitlines() == list(THING_NAMES)
    folders = sorted(p.name for p in (out / "classify").iterdir() if p.is_dir())
    assert folders == sorted(THING_NAMES)
    for thing in THING_NAMES:
        assert sorted(p.name for p in (out / "classify" / thing).iterdir()) == \
            [f"classify-{thing}-0000.jpg", f"classify-{thing}-0001.jpg"]
    world_json = json.loads((out / "world.json").read_text())
    assert world_json["classes"] == class_names()
    assert world_json["settings"]["seed"] == 0 and "workers" not in world_json["settings"]
    assert {c["name"] for c in world_json["concepts"]} == set(class_names())
    assert world_json["stats"] == json.loads(json.dumps(stats))
    assert [world_json["stats"][s]["count"] for s in ("teacher", "pretrain", "val", "classify")] == \
        [16, 16, 16, 2 * len(THING_NAMES)]
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 4 * 64


def test_world_has_the_required_concepts_and_distinct_mask_colours():
    assert {"sky", "cloud", "grass", "water", "sand", "snow", "road", "wall", "mountain"} <= set(STUFF_NAMES)
    assert len(THING_NAMES) >= 12
    assert {"tree", "house", "car", "boat", "person", "dog", "bird", "flower", "fence", "sun", "umbrella",
            "ball"} <= set(THING_NAMES)
    assert len(set(PALETTE[: len(CONCEPTS)])) == len(CONCEPTS)


def test_vocab_file_parses_as_name_colon_synonyms_and_loads_in_curation(world):
    out, _ = world
    lines = (out / "vocab.txt").read_text().splitlines()
    assert lines == vocabulary_lines()
    pattern = re.compile(r"^[a-z]+( [a-z]+)*: [a-z]+( [a-z]+)*(, [a-z]+( [a-z]+)*)*$")
    for line in lines:
        assert pattern.match(line), line
    assert [line.split(":")[0] for line in lines] == class_names()
    vocab = Vocabulary.from_file(out / "vocab.txt")
    assert vocab.concepts == class_names()


def test_shard_samples_have_unique_keys_and_json_truth(world):
    out, _ = world
    keys = []
    for split in ("teacher", "pretrain"):
        for s in iter_samples(out / split):
            assert s.key.startswith(f"{split}-")
            assert set(s.meta) >= {"concepts", "caption_concepts", "irrelevant"}
            assert s.caption.strip()
            assert s.image.size == (64, 64)
            keys.append(s.key)
    assert len(keys) == 32 and len(set(keys)) == 32


def test_val_masks_and_meta_agree_pixel_fractions_sum_to_one(world):
    out, _ = world
    rows = [json.loads(line) for line in (out / "val/meta.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    for row in rows:
        label = np.asarray(Image.open(out / "val/SegmentationClass" / f"{row['key']}.png"))
        counts = np.bincount(label.ravel(), minlength=len(CONCEPTS))
        expected = {CONCEPTS[i].name: counts[i] / label.size for i in np.flatnonzero(counts)}
        assert row["concepts"].keys() == expected.keys()
        for name, frac in expected.items():
            assert row["concepts"][name] == pytest.approx(frac, abs=1e-12)
        assert sum(row["concepts"].values()) == pytest.approx(1.0, abs=1e-6)
        if not row["irrelevant"]:
            assert set(row["caption_concepts"]) <= set(row["concepts"])


def test_shard_json_agrees_with_the_redrawn_mask(world):
    out, _ = world
    cfg = WorldConfig(seed=0, **TINY)
    for s in iter_samples(out / "teacher"):
        index = int(s.key.split("-")[1])
        redrawn = render_sample(cfg, "teacher", index)
        assert s.meta["concepts"] == pixel_fractions(redrawn.label)
        assert sum(s.meta["concepts"].values()) == pytest.approx(1.0, abs=1e-6)
        assert s.caption == redrawn.caption.text
        if not s.meta["irrelevant"]:
            assert set(s.meta["caption_concepts"]) <= set(s.meta["concepts"])


def test_caption_concepts_are_what_the_curation_vocabulary_extracts(world):
    out, _ = world
    vocab = Vocabulary.from_file(out / "vocab.txt")
    cfg = WorldConfig(seed=11)
    for i in range(200):
        s = render_sample(cfg, "teacher", i)
        assert vocab.extract(s.caption.text) == s.caption.concepts, s.caption.text


def test_caption_recall_in_band_and_captions_favour_things(sample_stats):
    summary = sample_stats.summary()
    assert 0.3 <= summary["caption_recall"] <= 0.5
    assert summary["thing_mention_rate"] > 3 * summary["stuff_mention_rate"]
    assert 0.01 <= summary["irrelevant_share"] <= 0.12
    assert summary["unique_caption_share"] >= 0.9


def test_no_concept_in_nearly_every_image_and_sky_in_at_most_sixty_percent(sample_stats):
    summary = sample_stats.summary()
    assert summary["max_concept_frequency"] <= 0.8
    assert summary["concepts"]["sky"]["frequency"] <= 0.62
    sky_weight = sum(k.weight for k in SCENE_TYPES if k.has_sky) / sum(k.weight for k in SCENE_TYPES)
    assert sky_weight <= 0.6
    assert all(summary["concepts"][c.name]["frequency"] > 0 for c in CONCEPTS)


def test_things_are_large_enough_to_span_several_patches(sample_stats):
    summary = sample_stats.summary()
    fractions = [summary["concepts"][name]["mean_pixel_fraction"] for name in THING_NAMES]
    assert np.mean(fractions) >= 0.08
    assert min(fractions) >= 0.04


def test_thing_scale_knob_makes_things_bigger():
    def mean_thing_fraction(scale: float) -> float:
        cfg = WorldConfig(seed=2, thing_scale=scale)
        values = []
        for i in range(60):
            s = render_sample(cfg, "pretrain", i)
            values += [f for n, f in s.fractions.items() if concept(n).kind == "thing"]
        return float(np.mean(values))

    assert mean_thing_fraction(1.4) > 1.3 * mean_thing_fraction(1.0)


def test_classify_images_show_their_class_as_the_largest_thing():
    cfg = WorldConfig(seed=4)
    for thing in THING_NAMES:
        for i in range(3):
            s = render_sample(cfg, "classify", i, thing)
            things = {n: f for n, f in s.fractions.items() if concept(n).kind == "thing"}
            assert max(things, key=things.get) == thing
            assert things[thing] >= 0.03


def test_image_size_is_a_knob_and_every_pixel_has_a_concept():
    s = render_sample(WorldConfig(size=96), "val", 0)
    assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
    assert s.label.shape == (96, 96) and s.label.max() < len(CONCEPTS)
    assert sum(s.fractions.values()) == pytest.approx(1.0, abs=1e-9)


def test_bad_settings_are_rejected_with_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="size"):
        generate_world(tmp_path / "a", WorldConfig(size=8))
    with pytest.raises(ValueError, match="teacher"):
        generate_world(tmp_path / "b", WorldConfig(teacher=-1))


def test_an_interrupted_world_is_marked_incomplete_and_can_be_overwritten(tmp_path, monkeypatch):
    def fail(out, cfg):
        raise RuntimeError("disk full")

    cfg = WorldConfig(teacher=2, pretrain=2, val=2, classify=1, contact_sheet=1)
    monkeypatch.setattr(world_module, "_write_classify", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_world(tmp_path / "w", cfg)
    assert json.loads((tmp_path / "w/world.json").read_text())["complete"] is False
    monkeypatch.undo()
    with pytest.raises(FileExistsError):
        generate_world(tmp_path / "w", cfg)
    generate_world(tmp_path / "w", cfg, overwrite=True)
    assert json.loads((tmp_path / "w/world.json").read_text())["complete"] is True


def test_cli_end_to_end_prints_recall_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cli-world"
    args = ["synth", str(out), "--seed", "7", "--teacher", "16", "--pretrain", "16", "--val", "16",
            "--classify", "1", "--size", "64", "--thing-scale", "1.1", "--contact-sheet", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "caption recall (pretrain):" in printed
    world_json = json.loads((out / "world.json").read_text())
    assert world_json["settings"]["thing_scale"] == 1.1
    assert world_json["stats"]["pretrain"]["count"] == 16
    assert len(list((out / "val/JPEGImages").glob("*.jpg"))) == 16
    assert main(args) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not a world")
    assert main(["synth", str(tmp_path / "other"), "--teacher", "1", "--overwrite"]) == 2
    assert (tmp_path / "other" / "keep.txt").exists()
    assert main(args[:-2] + ["--contact-sheet", "2", "--val", "4", "--overwrite"]) == 0
    assert len(list((out / "val/JPEGImages").glob("*.jpg"))) == 4
