"""The training loader: shard index, seeded batches, text modes, archive join, skips and substitutions."""

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from cocu.curation.archive import ArchiveRow
from cocu.data.writer import write_tar
from cocu.text.prompts import imagenet_templates
from cocu.train.config import load_config
from cocu.train.archive_join import MISSING_ARCHIVE_ROW
from cocu.train.data import (
    Collate,
    PackedArchive,
    StepBatchSampler,
    TextSampler,
    TrainDataset,
    epoch_permutation,
    make_augment,
    make_loader,
    prepare_data,
    sample_generators,
)
from cocu.train.shards import build_shard_index, hash_keys, load_or_build_index
from cocu.text.tokenizer import byte_level_tokenizer
from test_train_world import default_archive, jpeg, make_world, sample, write_shards, write_vocab


def _cfg(paths, *overrides):
    base = [f"output={paths['train'].parent / 'out'}", f"data.train={paths['train']}", f"data.archive={paths['archive']}"]
    base.append(f"text.vocab={paths['vocab']}")
    return load_config(None, base + list(overrides))


def _strip_template(text: str) -> str | None:
    """The concept a prompt wraps (the shortest reading), if ``text`` is one of the 80 templates."""
    found = []
    for template in imagenet_templates():
        head, tail = template.split("{}")
        if text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail):
            found.append(text[len(head) : len(text) - len(tail)])
    return min(found, key=len) if found else None


def test_shard_index_reads_members_by_offset_and_counts_bad_samples(tmp_path):
    good = [sample(i)[:2] for i in range(3)]
    bad = [
        ("nocap", {"jpg": jpeg((1, 2, 3))}),
        ("empty", {"jpg": jpeg((1, 2, 3)), "txt": b"   "}),
        ("badjson", {"jpg": jpeg((1, 2, 3)), "txt": b"a ball", "json": b"{not json"}),
        ("odd", {"jpg": jpeg((1, 2, 3)), "txt": b"a kite", "xyz": b"?"}),
        ("noimg", {"txt": b"a house"}),
        ("latin", {"jpg": jpeg((1, 2, 3)), "txt": "caf\u00e9".encode("latin-1")}),
    ]
    write_tar(tmp_path / "a.tar", good + bad)
    write_tar(tmp_path / "b.tar", [sample(0)[:2]])  # the same key again in the next shard
    index = build_shard_index(str(tmp_path), progress=False)
    assert index.keys.to_list() == ["badjson", "odd", "s0000", "s0001", "s0002"]
    assert index.skipped == {
        "bad_json": 1,
        "caption_not_utf8": 1,
        "duplicate_key": 1,
        "empty_caption": 1,
        "missing_caption": 1,
        "missing_image": 1,
        "unexpected_member": 1,
    }
    k = index.keys.to_list().index("s0001")
    assert index.image_bytes(k) == sample(1)[1]["jpg"]
    assert index.captions[k] == "a green kite under the sky"
    assert json.loads(index.json_bytes(k)) == json.loads(sample(1)[1]["json"])
    assert index.json_bytes(0) is None  # the bad json member was dropped, the sample kept


def test_truncated_shard_keeps_the_samples_before_the_damage(tmp_path):
    write_shards(tmp_path / "s", 6, per_shard=6)
    shard = tmp_path / "s" / "train-00000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    index = build_shard_index(str(shard), progress=False)
    assert 0 < len(index) < 6
    assert index.skipped["corrupt_shard"] == 1


def test_index_cache_is_reused_and_rebuilt_when_a_shard_changes(tmp_path):
    write_shards(tmp_path / "s", 5, per_shard=5)
    cache = tmp_path / "index.npz"
    first, _ = load_or_build_index(str(tmp_path / "s"), cache, progress=False)
    stamp = cache.stat().st_mtime_ns
    again, _ = load_or_build_index(str(tmp_path / "s"), cache, progress=False)
    assert cache.stat().st_mtime_ns == stamp and again.keys.to_list() == first.keys.to_list()
    assert isinstance(again.captions.blob, np.memmap) and isinstance(again.image_offset, np.memmap)  # file-backed
    assert again.image_bytes(2) == first.image_bytes(2)
    write_shards(tmp_path / "s", 3, per_shard=5, start=10)
    rebuilt, _ = load_or_build_index(str(tmp_path / "s"), cache, progress=False)
    assert rebuilt.keys.to_list() == ["s0010", "s0011", "s0012"]


def test_batches_partition_each_epoch_and_ranks_split_the_global_batch():
    n, batch = 10, 4
    full = list(StepBatchSampler(n, batch, 0, 1, seed=3, start_step=0, end_step=4))
    assert [e for b in full for e, _ in b] == [0] * 8 + [1] * 8  # 2 steps per epoch, tail of 2 dropped
    epoch0 = [p for b in full[:2] for _, p in b]
    assert epoch0 == epoch_permutation(3, 0, n)[:8].tolist() and len(set(epoch0)) == 8
    ranks = [list(StepBatchSampler(n, batch, r, 2, seed=3, start_step=0, end_step=4)) for r in range(2)]
    for step in range(4):
        assert ranks[0][step] + ranks[1][step] == full[step]
    resumed = list(StepBatchSampler(n, batch, 0, 1, seed=3, start_step=3, end_step=4))
    assert resumed == full[3:]
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(n, 3, 0, 2, 0, 0, 1)
    with pytest.raises(ValueError, match="fill one batch"):
        StepBatchSampler(3, 4, 0, 1, 0, 0, 1)


def test_items_are_a_pure_function_of_seed_epoch_and_position(tmp_path):
    paths = make_world(tmp_path, n=8)
    cfg = _cfg(paths, "text.mode=cocu")
    data = prepare_data(cfg, None, progress=False)
    ds = TrainDataset(data, make_augment(cfg, 32), seed=cfg.seed)
    a, b, c = ds[(0, 5)], ds[(0, 5)], ds[(1, 5)]
    assert torch.equal(a.image, b.image) and a.labels == b.labels
    assert a.image.shape == (3, 32, 32)
    assert not torch.equal(a.image, c.image)
    other_seed = TrainDataset(data, make_augment(cfg, 32), seed=cfg.seed + 1)[(0, 5)]
    assert not torch.equal(a.image, other_seed.image)


def test_caption_nouns_mode_uses_only_concepts_of_the_own_caption(tmp_path):
    paths = make_world(tmp_path, n=6)
    data = prepare_data(_cfg(paths, "text.mode=caption-nouns"), None, progress=False)
    ds = TrainDataset(data, make_augment(_cfg(paths), 32), seed=0)
    for pos in range(6):
        item = ds[(0, pos)]
        assert len(item.labels) == 3
        wrapped = [_strip_template(t) for t in item.labels]
        shape = item.caption.split()[2]
        assert sorted(w for w in wrapped if w) == sorted([shape, "sky"])  # "a red ball under the sky"
        assert item.labels.count(item.caption) == 1  # the third slot repeats the caption


def test_cocu_mode_draws_one_concept_per_archive_cluster(tmp_path):
    paths = make_world(tmp_path, n=6)
    data = prepare_data(_cfg(paths, "text.mode=cocu", "text.sampling=cluster"), None, progress=False)
    ds = TrainDataset(data, make_augment(_cfg(paths), 32), seed=0)
    item = ds[(0, 2)]
    key = data.index.keys[int(data.rows[2])]
    shape = ["ball", "kite", "house"][int(key[1:]) % 3]
    assert [_strip_template(t) for t in item.labels] == [shape, "sky", "grass"]


def test_oracle_mode_favours_large_pixel_fractions_and_never_draws_absent_concepts():
    sampler = TextSampler(mode="oracle", num_labels=1, templates=("{}",), oracle_pick="weighted")
    meta = {"concepts": {"sky": 0.7, "ball": 0.3, "grass": 0.0}}
    rng = np.random.default_rng(0)
    counts = Counter(sampler.texts(0, "k", "cap", meta, rng)[0] for _ in range(2000))
    assert set(counts) == {"sky", "ball"} and 0.65 < counts["sky"] / 2000 < 0.75
    uniform = TextSampler(mode="oracle", num_labels=3, templates=("{}",), oracle_pick="uniform")
    assert sorted(uniform.texts(0, "k", "cap", meta, rng)) == ["ball", "grass", "sky"]
    assert sampler.texts(0, "k", "cap", {"caption_concepts": []}, rng) == ["cap"]  # no usable concepts


def test_none_mode_has_no_prompt_texts_and_collate_orders_texts_sample_major(tmp_path):
    paths = make_world(tmp_path, n=4)
    cfg = _cfg(paths, "text.mode=none")
    data = prepare_data(cfg, None, progress=False)
    assert data.texts.labels_per_sample == 0
    tok = byte_level_tokenizer(32)
    ds = TrainDataset(data, make_augment(cfg, 32), seed=0)
    batch = Collate(tok, 32, 0)([ds[(0, 0)], ds[(0, 1)]])
    assert batch.images.shape == (2, 3, 32, 32) and batch.input_ids.shape[0] == 2
    sampler = TextSampler(mode="caption-nouns", num_labels=2, templates=("{}",), vocab=data.texts.vocab)
    ds.data.texts = sampler
    items = [ds[(0, 0)], ds[(0, 1)]]
    batch = Collate(tok, 32, 2)(items)
    texts = tok.batch_decode(batch.input_ids, skip_special_tokens=True)
    expected = [t for it in items for t in [it.caption, *it.labels]]
    assert [t.strip() for t in texts] == [t.lower() for t in expected]


def test_samples_without_archive_row_are_counted_and_dropped_or_kept(tmp_path):
    write_shards(tmp_path / "shards", 6)
    default_archive(tmp_path / "run", 6, skip=(1, 4))
    paths = {"train": tmp_path / "shards", "archive": tmp_path / "run", "vocab": write_vocab(tmp_path)}
    dropped = prepare_data(_cfg(paths, "text.mode=cocu"), None, progress=False)
    assert len(dropped) == 4 and dropped.skips == {MISSING_ARCHIVE_ROW: 2}
    assert [dropped.index.keys[int(r)] for r in dropped.rows] == ["s0000", "s0002", "s0003", "s0005"]
    kept = prepare_data(_cfg(paths, "text.mode=cocu", "text.missing_archive=caption"), None, progress=False)
    assert len(kept) == 6 and kept.skips == {MISSING_ARCHIVE_ROW: 2}
    ds = TrainDataset(kept, make_augment(_cfg(paths), 32), seed=0)
    item = ds[(0, 1)]  # s0001 "a green kite under the sky": caption-nouns fallback
    assert sorted(w for w in map(_strip_template, item.labels) if w) == ["kite", "sky"]


def test_corrupt_image_is_replaced_by_the_next_sample_and_reported(tmp_path):
    key0, members0, _ = sample(0)
    key1, members1, _ = sample(1)
    members0 = dict(members0, jpg=b"\xff\xd8 broken")
    write_tar(tmp_path / "s.tar", [(key0, members0), (key1, members1)])
    paths = {"train": tmp_path / "s.tar", "archive": tmp_path, "vocab": write_vocab(tmp_path)}
    cfg = _cfg(paths, "text.mode=caption-nouns")
    data = prepare_data(cfg, None, progress=False)
    ds = TrainDataset(data, make_augment(cfg, 32), seed=0)
    item = ds[(0, 0)]
    assert item.caption == "a green kite under the sky"
    assert [(r, k) for r, k, _, _ in item.skipped] == [("corrupt_image", "s0000")]


def test_worker_process_loader_gives_the_same_batches_as_in_process(tmp_path):
    paths = make_world(tmp_path, n=12)
    tok = byte_level_tokenizer(32)
    batches = {}
    for workers in (0, 1):
        cfg = _cfg(paths, "text.mode=cocu", "train.batch_size=4", f"data.num_workers={workers}")
        data = prepare_data(cfg, None, progress=False)
        loader = make_loader(data, cfg, tok, 32, 32, rank=0, world=1, start_step=1, end_step=5)
        batches[workers] = list(loader)
    assert len(batches[0]) == 4
    for a, b in zip(batches[0], batches[1]):
        assert torch.equal(a.images, b.images) and torch.equal(a.input_ids, b.input_ids)


def test_packed_archive_rebuilds_rows_for_the_sampler():
    rows = [
        ArchiveRow("a", "c", [], [], ["x", "y"], [1.0, 0.5], [0, 1]),
        None,
        ArchiveRow("b", "d", [], [], ["y"], [0.2], [0]),
    ]
    packed = PackedArchive.pack(rows)
    assert packed.row(0, "a", "c").concepts == ["x", "y"] and packed.row(0, "a", "c").scores == [1.0, 0.5]
    assert packed.row(1, "z", "e") is None
    assert packed.row(2, "b", "d").clusters == [0] and packed.names == ["x", "y"]


def test_captions_files_are_refused_with_a_clear_error(tmp_path):
    (tmp_path / "caps.csv").write_text("image,caption\na.jpg,a ball\n")
    with pytest.raises(ValueError, match="tar shards"):
        build_shard_index(str(tmp_path / "caps.csv"), progress=False)
    assert os.path.exists(tmp_path / "caps.csv")


def test_key_hashes_and_sample_seeds_are_the_same_numbers_on_numpy_1_and_2():
    assert hash_keys(["a", "s0001", ""]).tolist() == [9933592630516302547, 13980310648414836930, 0]
    aug, text = sample_generators(3, 1, 7)
    assert aug.initial_seed() == 7207880164961408499
    assert int(text.integers(1 << 30)) == 363158860
