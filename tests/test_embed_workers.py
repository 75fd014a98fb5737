"""`cocu embed` with DataLoader workers, padded part names, content-checked resume and write failures."""

import errno
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cocu.cli import main
from cocu.curation import embed as embed_mod
from cocu.curation import embed_loader
from cocu.curation.embed import embed_dataset, load_embeddings, read_rejected
from cocu.curation.encoder import load_encoder, resolve_device, resolve_precision
from raw_tar import write_raw_tar

ENCODER = "random:clip-tiny"


def _jpeg(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _shards(folder, captions="photo {i}", seed=0, good=14):
    """Two shards: ``good`` good samples plus a corrupt image, a missing caption and a duplicate key."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = [(f"k{i:03d}", {"jpg": _jpeg(seed + i), "txt": captions.format(i=i).encode()}) for i in range(good)]
    samples.insert(3, ("bad-img", {"jpg": b"\xff\xd8 not a jpeg", "txt": b"broken"}))
    samples.insert(8, ("no-cap", {"jpg": _jpeg(99)}))
    samples.append(("k001", {"jpg": _jpeg(5), "txt": b"again"}))
    half = len(samples) // 2
    write_raw_tar(folder / "s-00000.tar", samples[:half])
    write_raw_tar(folder / "s-00001.tar", samples[half:])
    return folder


REJECTED = {"bad-img": "corrupt_image", "no-cap": "missing_caption", "k001": "duplicate_key"}


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(ENCODER)


def _files(out):
    """Every part file's content: arrays exactly, parquet tables as Python values."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.suffix == ".npy":
            found[rel] = np.load(path).tobytes()
        elif path.suffix == ".parquet":
            found[rel] = pq.read_table(path).to_pylist()
    return found


def test_worker_embedding_equals_serial_and_accounts_for_every_sample(tmp_path, encoder):
    data = _shards(tmp_path / "data")
    serial = embed_dataset(data, encoder, tmp_path / "serial", batch_size=3, rows_per_part=4, workers=0)
    parallel = embed_dataset(data, encoder, tmp_path / "parallel", batch_size=3, rows_per_part=4, workers=2)
    assert _files(tmp_path / "serial") == _files(tmp_path / "parallel")
    assert serial.summary() == parallel.summary()
    assert parallel.embedded == 14 and parallel.parts_written == [0, 1, 2, 3]
    emb = load_embeddings(tmp_path / "parallel")
    assert emb.keys == [f"k{i:03d}" for i in range(14)]
    rejected = {r["key"]: r["reason"] for r in read_rejected(tmp_path / "parallel").to_pylist()}
    assert rejected == REJECTED
    assert len(emb) + len(rejected) == 17  # every sample read is embedded or rejected


def test_resume_after_interruption_with_workers_equals_an_uninterrupted_run(tmp_path, encoder, monkeypatch):
    data = _shards(tmp_path / "data")
    embed_dataset(data, encoder, tmp_path / "clean", batch_size=2, rows_per_part=3, workers=0)
    calls = {"n": 0}
    real = encoder.encode_pixels

    def interrupted(pixels):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(pixels)

    monkeypatch.setattr(encoder, "encode_pixels", interrupted)
    out = tmp_path / "emb"
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(data, encoder, out, batch_size=2, rows_per_part=3, workers=2)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_00000.npy", "img_emb_00001.npy"]
    stale = out / "img_emb" / ".img_emb_00002.npy.x1y2.tmp"  # what kill -9 leaves: an empty temp file
    stale.write_bytes(b"")
    again = embed_dataset(data, encoder, out, batch_size=2, rows_per_part=3, workers=2)
    assert again.parts_kept == [0, 1] and again.kept_rows == 6 and again.new_rows == 8
    assert not stale.exists()
    clean, resumed = load_embeddings(tmp_path / "clean"), load_embeddings(out)
    assert resumed.keys == clean.keys and resumed.captions == clean.captions
    np.testing.assert_allclose(resumed.image, clean.image, atol=1e-6)  # other batches after resume: BLAS rounding
    np.testing.assert_allclose(resumed.text, clean.text, atol=1e-6)
    assert {r["key"]: r["reason"] for r in read_rejected(out).to_pylist()} == REJECTED


def test_parts_are_zero_padded_and_an_old_unpadded_folder_resumes_in_integer_order(tmp_path, encoder):
    data = _shards(tmp_path / "data")
    out = tmp_path / "emb"
    embed_dataset(data, encoder, out, batch_size=4, rows_per_part=1, workers=0)
    names = sorted(p.name for p in (out / "img_emb").iterdir())
    assert names == [f"img_emb_{i:05d}.npy" for i in range(14)]  # name order is row order
    first = load_embeddings(out)
    kinds = (("img_emb", "img_emb", "npy"), ("text_emb", "text_emb", "npy"), ("metadata", "metadata", "parquet"))
    for sub, stem, ext in kinds:
        for i in range(14):
            (out / sub / f"{stem}_{i:05d}.{ext}").rename(out / sub / f"{stem}_{i}.{ext}")
    (out / "metadata" / "metadata_10.parquet").unlink()  # part 10 interrupted
    for sub, stem, ext in kinds:
        (out / sub / f"{stem}_13.{ext}").unlink()  # part 13 never written
    again = embed_dataset(data, encoder, out, batch_size=4, rows_per_part=1, workers=0)
    assert again.parts_written == [10, 13] and again.kept_rows == 12
    assert not (out / "img_emb" / "img_emb_10.npy").exists() and (out / "img_emb" / "img_emb_00010.npy").is_file()
    rebuilt = load_embeddings(out)
    assert rebuilt.keys == first.keys  # parts 0, 1, ..., 9, 10, 11, ... by number, not 0, 1, 10, 11, 12, 2, ...
    # the resumed parts are embedded in other batches than the first run's: equal to float32 rounding
    np.testing.assert_allclose(rebuilt.image, first.image, rtol=0, atol=1e-6)


def test_two_files_for_one_part_number_are_refused_naming_both(tmp_path, encoder):
    data = _shards(tmp_path / "data", good=4)
    out = tmp_path / "emb"
    embed_dataset(data, encoder, out, workers=0)
    (out / "img_emb" / "img_emb_0.npy").write_bytes((out / "img_emb" / "img_emb_00000.npy").read_bytes())
    with pytest.raises(ValueError, match=r"two parts numbered 0 .*img_emb_0"):
        load_embeddings(out)


def test_embed_into_a_folder_from_other_data_with_overlapping_keys_is_refused(tmp_path, capsys):
    first = _shards(tmp_path / "a", captions="a photo {i}")
    other = _shards(tmp_path / "b", captions="another picture {i}")
    out = tmp_path / "emb"
    assert main(["embed", str(first), "--encoder", ENCODER, "--out", str(out), "--workers", "2"]) == 0
    capsys.readouterr()
    assert main(["embed", str(other), "--encoder", ENCODER, "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "s-00000.tar" in err and "--overwrite" in err and "'a photo 0'" in err
    assert main(["embed", str(other), "--encoder", ENCODER, "--out", str(out), "--overwrite"]) == 0
    assert load_embeddings(out).captions[0] == "another picture 0"


def test_a_shard_whose_content_changed_is_refused_on_resume(tmp_path, encoder):
    data = _shards(tmp_path / "data")
    out = tmp_path / "emb"
    embed_dataset(data, encoder, out, rows_per_part=4, workers=0)
    (out / "metadata" / "metadata_00003.parquet").unlink()  # leave work to resume
    _shards(data, seed=1000)  # the same keys and captions, other images, same size
    with pytest.raises(ValueError, match=r"s-00000\.tar changed since .*--overwrite"):
        embed_dataset(data, encoder, out, rows_per_part=4, workers=0)
    again = embed_dataset(data, encoder, out, rows_per_part=4, workers=0, overwrite=True)
    assert again.kept_rows == 0 and again.embedded == 14


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "is full"),
        (OSError("6400 requested and 6112 written"), "is full"),
        (OSError(errno.EROFS, "Read-only file system"), "not writable"),
    ],
)
def test_a_failing_write_ends_with_one_clear_line_and_leaves_nothing_a_rerun_trusts(
    tmp_path, monkeypatch, capsys, error, expected
):
    data = _shards(tmp_path / "data")
    out = tmp_path / "emb"
    real_save = embed_mod.np.save
    saved = {"n": 0}

    def failing_save(handle, array):
        saved["n"] += 1
        if saved["n"] == 5:  # the image file of the third part: half written, then the disk is full
            handle.write(b"\x93NUMPY partial")
            raise error
        real_save(handle, array)

    monkeypatch.setattr(embed_mod.np, "save", failing_save)
    args = ["embed", str(data), "--encoder", ENCODER, "--out", str(out), "--rows-per-part", "4", "--workers", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].split("cocu embed: error: ")[1].startswith("cannot write ")
    assert "img_emb_00002.npy" in err and expected in err and "rerun" in err
    assert not list(out.rglob("*.tmp")) and not (out / "img_emb" / "img_emb_00002.npy").exists()
    monkeypatch.undo()
    assert main(args) == 0
    assert len(load_embeddings(out)) == 14


def test_device_auto_is_cpu_here_and_precision_defaults_follow_the_device():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_precision(None, torch.device("cpu")) == "fp32"
    assert resolve_precision(None, torch.device("cuda", 0)) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_bf16_precision_runs_the_towers_under_autocast(encoder):
    bf16 = load_encoder(ENCODER, device="cpu", precision="bf16")
    pixels = torch.randn(2, 3, 64, 64)  # [b,3,S,S]
    full, low = encoder.encode_pixels(pixels), bf16.encode_pixels(pixels)
    assert low.dtype == np.float32 and not np.array_equal(full, low)
    np.testing.assert_allclose(low, full, atol=0.05)


def test_default_workers_are_the_cores_minus_one_at_most_eight(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, want in ((1, 0), (2, 1), (32, 8)):
        monkeypatch.setattr(embed_loader.os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert embed_loader.default_workers() == want
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks on one machine share its cores
    assert embed_loader.default_workers() == 7


def test_curate_takes_device_precision_and_workers_as_runtime_options():
    from cocu.cli import build_parser
    from cocu.cli.curate import config_from_args
    from cocu.curation.pipeline import CurateConfig

    args = build_parser("curate").parse_args(
        ["curate", "data", "--encoder", ENCODER, "--out", "run", "--device", "cpu", "--precision", "bf16",
         "--workers", "3"]
    )
    cfg = config_from_args(args, device=args.device, precision=args.precision, workers=args.workers)
    assert (cfg.device, cfg.precision, cfg.workers) == ("cpu", "bf16", 3)
    assert cfg.result_options() == CurateConfig().result_options()  # a rerun with other runtime options reuses the run
    defaults = build_parser("curate").parse_args(["curate", "data", "--encoder", ENCODER, "--out", "run"])
    assert defaults.device == "auto" and defaults.precision is None
    assert defaults.workers == embed_loader.default_workers()
