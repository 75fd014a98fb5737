"""Model configs as data, the from-scratch fixes, the built-in tokenizers, and model folders that
transformers 4.x and 5.x read alike (the ``lowest`` tests run again under the lowest supported versions)."""

import argparse
import json

import pytest
import torch
from transformers import AutoTokenizer, GroupViTModel

from cocu.models import bundle as bundle_module
from cocu.models.bundle import load_bundle, save_bundle
from cocu.models.factory import build_clip, build_groupvit, get_model_spec, groupvit_config, model_config_names
from cocu.models.features import pooled_features
from cocu.text.prompts import imagenet_templates
from cocu.text.tokenizer import (
    FAST_CLASS,
    MODEL_INPUT_NAMES,
    byte_level_tokenizer,
    load_tokenizer,
    save_tokenizer,
    special_token_ids,
    train_bpe_tokenizer,
)

BPE_CORPUS = ["a red dog on the road", "a dog on the grass", "the cat"] * 20


def test_named_configs_are_shipped():
    assert {"groupvit-s", "groupvit-tiny", "clip-tiny"} <= set(model_config_names())


def test_groupvit_s_matches_the_paper():
    tok = byte_level_tokenizer()
    cfg = groupvit_config(get_model_spec("groupvit-s"), tok)
    v, t = cfg.vision_config, cfg.text_config
    assert (v.image_size, v.patch_size, v.hidden_size) == (224, 16, 384)
    assert v.depths == [6, 3, 3] and v.num_hidden_layers == 12
    assert v.num_group_tokens == [64, 8, 0] and v.num_output_groups == [64, 8, 8]
    assert (t.hidden_size, t.num_hidden_layers, t.max_position_embeddings) == (256, 12, 77)
    assert cfg.projection_dim == 256


def test_text_config_takes_the_tokenizer_ids():
    tok = byte_level_tokenizer(32)
    cfg = groupvit_config(get_model_spec("groupvit-tiny"), tok)
    ids = special_token_ids(tok)
    assert cfg.text_config.eos_token_id == ids["eos_token_id"] == tok.eos_token_id
    assert cfg.text_config.vocab_size == len(tok)


@pytest.mark.lowest
def test_seeded_models_are_the_same_under_every_transformers_version():
    """Recorded under transformers 5.24, checked under 4.40, 4.46 and 4.57: the seed alone fixes the weights (4.x and 5.x draw
    their own initial weights in different orders, which gave random:clip-tiny embeddings 0.4 apart)."""
    tok = byte_level_tokenizer(32)
    pixels = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)  # [2,3,64,64]
    enc = tok(["a photo of a dog.", "sky"], padding=True, return_tensors="pt")
    with torch.no_grad():
        clip = build_clip("clip-tiny", tok, seed=0).eval()
        text = pooled_features(clip.get_text_features(input_ids=enc.input_ids, attention_mask=enc.attention_mask))
        image = pooled_features(clip.get_image_features(pixel_values=pixels))  # [2,128]
        groupvit = build_groupvit("groupvit-tiny", tok, seed=0).eval()
        logits = groupvit(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pixels)
    expected_text = [1.0787, -0.9427, -0.6761, 1.6153, -2.5186, -0.3618]
    expected_image = [0.5017, 0.8324, 0.6275, -0.3215, 0.3141, -0.3675]
    torch.testing.assert_close(text[:, :3].flatten(), torch.tensor(expected_text), atol=2e-4, rtol=0)
    torch.testing.assert_close(image[:, :3].flatten(), torch.tensor(expected_image), atol=2e-4, rtol=0)
    torch.testing.assert_close(
        logits.logits_per_image.flatten(), torch.tensor([-0.3132, -1.4378, 0.6773, 0.291]), atol=2e-4, rtol=0
    )


def test_initial_weights_follow_the_clip_scheme():
    model = build_clip("clip-tiny", byte_level_tokenizer(32), seed=0).requires_grad_(False)
    layer = model.text_model.encoder.layers[0]
    assert torch.equal(layer.layer_norm1.weight, torch.ones(128)) and not layer.self_attn.q_proj.bias.any()
    q_std = 128**-0.5 * (2 * 4) ** -0.5
    assert abs(float(layer.self_attn.q_proj.weight.std()) - q_std) < 0.1 * q_std
    assert abs(float(model.text_projection.weight.std()) - 128**-0.5) < 0.1 * 128**-0.5
    assert float(model.logit_scale) == pytest.approx(model.config.logit_scale_init_value)


def test_group_tokens_and_positions_are_not_left_at_zero():
    model = build_groupvit("groupvit-tiny", byte_level_tokenizer(32), seed=0)
    vision = model.vision_model
    assert vision.embeddings.position_embeddings.abs().sum() > 0
    tokens = vision.encoder.stages[0].group_token
    assert tokens.std() > 0.005
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])


def test_same_seed_builds_identical_weights_and_keeps_global_rng():
    tok = byte_level_tokenizer(32)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_clip("clip-tiny", tok, seed=7)
    after = torch.rand(1)
    b = build_clip("clip-tiny", tok, seed=7)
    assert torch.equal(before, after)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_groupvit_tiny_forward_gives_loss_and_segmentation():
    tok = byte_level_tokenizer(32)
    model = build_groupvit("groupvit-tiny", tok, seed=0).eval()
    enc = tok(["a car on a road", "a dog"], padding=True, return_tensors="pt")
    out = model(
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        pixel_values=torch.randn(2, 3, 64, 64),
        return_loss=True,
        output_segmentation=True,
    )
    assert torch.isfinite(out.loss)
    assert out.segmentation_logits.shape == (2, 2, 64, 64)


def test_byte_tokenizer_wraps_in_bos_eos_and_lowercases():
    tok = byte_level_tokenizer(16)
    ids = tok("A Car").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids == tok("a car").input_ids
    long = tok("x" * 100, truncation=True).input_ids
    assert len(long) == 16 and long[-1] == tok.eos_token_id


def test_trained_bpe_merges_frequent_words(tmp_path):
    tok = train_bpe_tokenizer(["a red car on the road", "a dog on the grass"] * 20, vocab_size=300)
    assert len(tok("a red car").input_ids) < len(byte_level_tokenizer()("a red car").input_ids)
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert again("a red car").input_ids == tok("a red car").input_ids


@pytest.mark.lowest
def test_trained_bpe_gives_the_same_ids_under_every_version():
    """Recorded under tokenizers 0.23 / transformers 5.24; the same under tokenizers 0.19, 0.20 and 0.22."""
    tok = train_bpe_tokenizer(BPE_CORPUS, vocab_size=300)
    assert tok(["a red dog", "the grass"]).input_ids == [[1, 264, 278, 268, 0], [1, 261, 281, 0]]
    assert tok.convert_ids_to_tokens(tok("dog").input_ids) == ["<|startoftext|>", "\u0120dog", "<|endoftext|>"]


@pytest.mark.lowest
def test_saved_tokenizer_folder_is_portable_and_has_no_token_type_ids(tmp_path):
    tok = train_bpe_tokenizer(BPE_CORPUS, vocab_size=300)
    save_tokenizer(tok, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text("utf-8"))
    assert config["tokenizer_class"] == FAST_CLASS and config["model_input_names"] == MODEL_INPUT_NAMES
    merges = json.loads((tmp_path / "tokenizer.json").read_text("utf-8"))["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    for loaded in (load_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(tmp_path)):
        enc = loaded(["a red dog", "the grass"], padding=True)
        assert set(enc.keys()) == {"input_ids", "attention_mask"}
        assert enc.input_ids == tok(["a red dog", "the grass"], padding=True).input_ids


@pytest.mark.lowest
def test_a_folder_in_transformers_5_form_loads_the_same(tmp_path):
    """transformers 5 names the class TokenizersBackend, states no add_prefix_space (4.57 then drops the
    prefix space) and tokenizers 0.20+ writes merges as pairs; none may change the ids (transformers
    4.x does not know the class, tokenizers 0.19 not the pairs)."""
    tok = train_bpe_tokenizer(BPE_CORPUS, vocab_size=300)
    save_tokenizer(tok, tmp_path)
    config_path, json_path = tmp_path / "tokenizer_config.json", tmp_path / "tokenizer.json"
    config = json.loads(config_path.read_text("utf-8"))
    config.update(tokenizer_class="TokenizersBackend", backend="tokenizers")
    del config["model_input_names"], config["add_prefix_space"]
    config_path.write_text(json.dumps(config), "utf-8")
    raw = json.loads(json_path.read_text("utf-8"))
    raw["model"]["merges"] = [m.split(" ") for m in raw["model"]["merges"]]
    json_path.write_text(json.dumps(raw), "utf-8")
    again = load_tokenizer(str(tmp_path))
    assert again(["a red dog", "the grass"]).input_ids == [[1, 264, 278, 268, 0], [1, 261, 281, 0]]
    assert "token_type_ids" not in again("a dog")


def test_eighty_distinct_templates():
    templates = imagenet_templates()
    assert len(templates) == 80 == len(set(templates))
    assert all(t.count("{}") == 1 for t in templates)


@pytest.mark.lowest
def test_saved_bundle_loads_with_same_weights_tokenizer_and_preprocessing(tmp_path):
    tok = byte_level_tokenizer(32)
    model = build_groupvit("groupvit-tiny", tok, seed=3).eval()
    out = save_bundle(model, tok, tmp_path / "model", image_size=64)
    bundle = load_bundle(out)
    assert bundle.family == "groupvit" and bundle.preprocess.size == 64
    assert bundle.tokenizer("a dog").input_ids == tok("a dog").input_ids
    plain = GroupViTModel.from_pretrained(out)
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".model.*")), "no temporary folder is left behind"
    plain_tok = AutoTokenizer.from_pretrained(out)
    enc = plain_tok(["a dog", "a red car"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = plain(**enc, pixel_values=torch.zeros(1, 3, 64, 64)).logits_per_image  # the plain transformers path
    assert logits.shape == (1, 2)


@pytest.fixture
def no_hub(monkeypatch):
    """Any hub lookup (config, tokenizer, image processor) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a hub lookup was made for {args}")

    monkeypatch.setattr(bundle_module.AutoConfig, "from_pretrained", refuse)


@pytest.mark.parametrize("spec", ["{tmp}/not-there", "./not-there", "~/cocu-no-such-model-folder", "a/b/not-there"])
def test_a_missing_model_path_fails_before_any_hub_lookup(tmp_path, monkeypatch, no_hub, spec):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_bundle(spec.format(tmp=tmp_path))


def test_a_name_under_an_existing_folder_is_taken_as_a_path(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="runs/model: no such model folder"):
        load_bundle("runs/model")


def test_a_folder_without_config_is_named(tmp_path, no_hub):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_bundle(tmp_path)


def test_an_uncached_hub_name_fails_at_once_when_the_hub_is_off(monkeypatch, no_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache while the hub is off"):
        load_bundle("cocu-tests/no-such-model")


def test_an_uncached_hub_name_fails_at_once_when_the_hub_cannot_be_reached(monkeypatch, no_hub):
    import socket

    from huggingface_hub import constants

    with socket.socket() as sock:  # a loopback port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(FileNotFoundError, match="while the hub cannot be reached"):
        load_bundle("cocu-tests/no-such-model")


def test_a_cached_hub_name_loads_from_its_snapshot_when_the_hub_is_off(tmp_path, monkeypatch):
    """The Hugging Face cache layout (models--org--name/snapshots/REV/...) is read without a hub lookup."""
    from huggingface_hub import constants

    tok = byte_level_tokenizer(32)
    snapshot = tmp_path / "models--cocu-tests--tiny" / "snapshots" / ("0" * 40)
    save_bundle(build_clip("clip-tiny", tok, seed=0), tok, snapshot, image_size=64)
    (tmp_path / "models--cocu-tests--tiny" / "refs").mkdir()
    (tmp_path / "models--cocu-tests--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bundle = load_bundle("cocu-tests/tiny")
    assert bundle.family == "clip" and bundle.tokenizer("a dog").input_ids == tok("a dog").input_ids


def test_atomic_write_leaves_ordinary_permissions_and_no_temp_on_error(tmp_path):
    import os

    from cocu.utils.atomic import atomic_path, atomic_write_json

    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "broken.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_text_encoders_pool_at_end_of_text_so_prompts_differ():
    """transformers pools at the largest id when eos_token_id == 2; our tokenizers must avoid that id."""
    for tok in (byte_level_tokenizer(32), train_bpe_tokenizer(["a photo of a cat", "a dog"] * 10, vocab_size=280)):
        assert tok.eos_token_id != 2
        model = build_clip("clip-tiny", tok, seed=0).eval()
        enc = tok(["a photo of a cat.", "a photo of a dog.", "an airplane"], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model.text_model(**enc).pooler_output
        assert not torch.allclose(hidden[0], hidden[1])
        assert not torch.allclose(hidden[0], hidden[2])


def test_cli_registers_every_command_and_rejects_an_unknown_one():
    from cocu.cli import build_parser, command_modules, main

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    registered = set(subparsers.choices)
    assert registered == {name.replace("_", "-") for name in command_modules()}
    readme_commands = {"synth", "embed", "index", "vocab", "curate", "archive", "train", "eval-seg", "eval-cls"}
    assert readme_commands | {"segment", "demo"} <= registered
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


def test_lowest_pass_installs_exactly_the_declared_lower_bounds():
    """`make test` runs the `lowest` tests under the Makefile's pins; each must be a lower bound in
    pyproject.toml, so a range there is a promise that CI checks."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    makefile = (root / "Makefile").read_text("utf-8")
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([0-9.]+?)(?:\.\*)?"', makefile.split("LOWEST_PINS :=")[1].splitlines()[0]))
    bounds = dict(re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', (root / "pyproject.toml").read_text("utf-8")))
    assert {"numpy", "transformers", "tokenizers", "pyarrow", "webdataset"} <= set(pins)
    assert {name: bounds.get(name) for name in pins} == pins
