"""Model configs as data, the from-scratch fixes, and the built-in tokenizers."""

import torch

from cocu.models.factory import build_clip, build_groupvit, get_model_spec, groupvit_config, model_config_names
from cocu.text.prompts import imagenet_templates
from cocu.text.tokenizer import byte_level_tokenizer, special_token_ids, train_bpe_tokenizer


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
    from cocu.text.tokenizer import load_tokenizer

    again = load_tokenizer(str(tmp_path))
    assert again("a red car").input_ids == tok("a red car").input_ids


def test_eighty_distinct_templates():
    templates = imagenet_templates()
    assert len(templates) == 80 == len(set(templates))
    assert all(t.count("{}") == 1 for t in templates)


def test_saved_bundle_loads_with_same_weights_tokenizer_and_preprocessing(tmp_path):
    from transformers import GroupViTModel

    from cocu.models.bundle import load_bundle, save_bundle

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


def test_loading_a_missing_folder_names_it(tmp_path):
    import pytest

    from cocu.models.bundle import load_bundle

    with pytest.raises(FileNotFoundError, match="not-there"):
        load_bundle(tmp_path / "not-there")


def test_atomic_write_leaves_ordinary_permissions_and_no_temp_on_error(tmp_path):
    import os

    import pytest

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


def test_cli_lists_every_command_and_runs_one_by_name(capsys):
    import pytest

    from cocu.cli import build_parser, main

    help_text = build_parser().format_help()
    for command in ("synth", "embed", "index", "vocab", "curate", "train", "eval-seg", "eval-cls", "segment", "demo"):
        assert command in help_text
    with pytest.raises(SystemExit):
        main(["no-such-command"])
