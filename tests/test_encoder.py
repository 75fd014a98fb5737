"""The frozen CLIP of curation: spec resolution, determinism, normalisation, batching, clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cocu.curation.encoder import load_encoder, parse_random_spec
from cocu.models.bundle import save_bundle
from cocu.models.factory import build_groupvit
from cocu.text.tokenizer import byte_level_tokenizer


def _images():
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (90, 50), (33, 120), (64, 80), (200, 150)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes] + [
        Image.new("L", (70, 70), 128)
    ]


TEXTS = ["a photo of a cat.", "two dogs on the grass", "", "x" * 500]


def test_random_clip_tiny_is_deterministic_and_seeded(encoder):
    again = load_encoder("random:clip-tiny@0")
    other = load_encoder("random:clip-tiny@1")
    a, b, c = (e.encode_images(_images()) for e in (encoder, again, other))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-3)
    np.testing.assert_array_equal(encoder.encode_texts(TEXTS), again.encode_texts(TEXTS))
    assert encoder.spec == "random:clip-tiny" and again.spec == "random:clip-tiny@0"


def test_embeddings_are_unit_float32_rows(encoder):
    img, txt = encoder.encode_images(_images()), encoder.encode_texts(TEXTS)
    assert img.shape == (6, encoder.dim) and txt.shape == (4, encoder.dim) and encoder.dim == 128
    assert img.dtype == np.float32 and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert encoder.encode_images([]).shape == (0, 128)


def test_batching_does_not_change_the_result(encoder):
    small = load_encoder("random:clip-tiny", batch_size=2)
    np.testing.assert_allclose(small.encode_images(_images()), encoder.encode_images(_images()), atol=1e-5)
    np.testing.assert_allclose(small.encode_texts(TEXTS), encoder.encode_texts(TEXTS), atol=1e-5)


def test_encoding_runs_without_gradients(encoder):
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert not encoder.model.training


def test_local_folder_loads_the_same_clip_with_its_preprocessing(encoder, tmp_path):
    folder = tmp_path / "clip"
    save_bundle(encoder.model, encoder.tokenizer, folder, image_size=64)
    loaded = load_encoder(str(folder))
    assert loaded.preprocess.size == 64 and loaded.max_text_length == 32
    np.testing.assert_allclose(loaded.encode_images(_images()), encoder.encode_images(_images()), atol=1e-5)
    np.testing.assert_allclose(loaded.encode_texts(TEXTS), encoder.encode_texts(TEXTS), atol=1e-5)
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    processor.update(crop_size={"height": 48, "width": 48}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    custom = load_encoder(str(folder))
    assert custom.preprocess.size == 48 and custom.preprocess.mean == (0.5, 0.5, 0.5)


def test_random_spec_parsing():
    assert parse_random_spec("random:clip-tiny") == ("clip-tiny", 0)
    assert parse_random_spec("random:clip-tiny@42") == ("clip-tiny", 42)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("random:no-such-config", "unknown CLIP config 'no-such-config'.*clip-tiny"),
        ("random:clip-tiny@seven", "seed after '@' must be an integer"),
        ("random:groupvit-tiny", "unknown CLIP config"),
        ("cocu-tests/surely-not-cached-clip", "not in the local Hugging Face cache.*huggingface-cli download"),
        ("./no/such/folder", "no such folder"),
    ],
)
def test_unresolvable_specs_get_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        load_encoder(spec)
    assert spec in str(err.value)


def test_a_folder_without_config_or_with_a_groupvit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no config.json.*Fix:"):
        load_encoder(str(tmp_path))
    tok = byte_level_tokenizer(32)
    with torch.random.fork_rng():
        model = build_groupvit("groupvit-tiny", tok, seed=0)
    save_bundle(model, tok, tmp_path / "gv", image_size=64)
    with pytest.raises(ValueError, match="is a groupvit model; curation needs a CLIP"):
        load_encoder(str(tmp_path / "gv"))
