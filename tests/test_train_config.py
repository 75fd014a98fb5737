"""Training config: YAML + dotted overrides into the dataclass schema, strict keys, shipped configs, schedule."""

import math
from pathlib import Path

import pytest
import torch

from cocu.cli import main
from cocu.train.config import (
    ConfigError,
    TrainConfig,
    changed_keys,
    load_config,
    packaged_configs,
    save_config,
    valid_keys,
)
from cocu.train.optim import WarmupCosine, build_optimizer, param_groups, warmup_steps

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"
REQUIRED = ["output=/tmp/x", "data.train=/data/c3-{00000..00001}.tar"]


def test_overrides_are_yaml_scalars_on_dotted_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output: a\ndata:\n  train: /d\noptim:\n  lr: 1e-3\n")
    overrides = ["optim.lr=2e-4", "train.max_steps=7", "resume=null", "data.augment.flip=false", "optim.betas=[0.9, 0.98]"]
    cfg = load_config(path, overrides)
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 7 and cfg.resume is None and cfg.data.augment.flip is False
    assert cfg.optim.betas == [0.9, 0.98]
    assert load_config(path).optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string; float fields accept it
    listed = load_config(path, ["data.train=[/a.tar, /b.tar]"])
    assert listed.data.train == ["/a.tar", "/b.tar"]


def test_unknown_override_key_is_an_error_listing_the_valid_keys_of_its_section():
    with pytest.raises(ConfigError) as err:
        load_config(None, [*REQUIRED, "optim.lrr=1"])
    assert "optim.lrr" in str(err.value) and "optim.lr, optim.weight_decay" in str(err.value)
    with pytest.raises(ConfigError, match="valid keys: output, seed"):
        load_config(None, [*REQUIRED, "optimiser.lr=1"])


def test_unknown_key_in_the_yaml_file_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output: a\ndata:\n  train: /d\n  trian_workers: 3\n")
    message = r"unknown config key data\.trian_workers; valid keys in data: train, archive"
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=abc", "train.batch_size: expected an integer"),
        ("train.batch_size=2.5", "train.batch_size: expected an integer"),
        ("text.mode=captions", "text.mode: 'captions' is not one of caption-nouns, cocu, oracle, none"),
        ("optim.lr=-1", "optim.lr: must be positive"),
        ("data.augment=3", "data.augment is a section, not a value; set its keys instead: data.augment.scale_min"),
        ("train.precision=fp16", "train.precision"),
        ("optim.lr", "not of the form key=value"),
    ],
)
def test_bad_values_are_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, [*REQUIRED, override])


def test_missing_data_path_and_archive_are_errors_saying_what_to_pass():
    with pytest.raises(ConfigError, match="data.train is not set"):
        load_config(None, ["output=x"])
    with pytest.raises(ConfigError, match="text.mode=cocu needs data.archive"):
        load_config(None, [*REQUIRED, "text.mode=cocu"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(CONFIGS / "groupvit_tiny_synth_cocu.yaml", ["optim.lr=1e-4"])
    save_config(cfg, tmp_path / "train_config.yaml")
    again = load_config(tmp_path / "train_config.yaml")
    assert again == cfg and isinstance(again, TrainConfig)


def test_changed_keys_ignore_runtime_only_settings():
    a = load_config(None, REQUIRED)
    b = load_config(None, [*REQUIRED, "data.num_workers=4", "train.max_steps_this_run=3", "resume=null"])
    c = load_config(None, [*REQUIRED, "optim.lr=1e-2"])
    assert changed_keys(a, b) == [] and changed_keys(a, c) == ["optim.lr"]


def test_paper_cc3m_configs_carry_the_published_hyper_parameters():
    for name, mode in (("groupvit_c3.yaml", "caption-nouns"), ("cocu_c3.yaml", "cocu")):
        cfg = load_config(CONFIGS / name, ["data.train=/d/c3-{00000..00275}.tar", "data.archive=/runs/c3"])
        assert cfg.model.config == "groupvit-s" and cfg.model.tokenizer == "openai/clip-vit-base-patch16"
        assert cfg.text.mode == mode and cfg.text.num_labels == 3
        o, t = cfg.optim, cfg.train
        assert (o.lr, o.weight_decay, o.warmup, o.warmup_unit, o.warmup_lr, o.min_lr, o.clip_grad) == (
            1.6e-3, 0.05, 2.0, "epochs", 4e-6, 4e-5, 5.0
        )
        assert (t.batch_size, t.epochs, t.precision) == (1024, 30, "bf16")


def test_synthetic_world_configs_use_the_conventional_layout():
    clip = load_config(CONFIGS / "clip_tiny_synth.yaml")
    base = load_config(CONFIGS / "groupvit_tiny_synth_baseline.yaml")
    cocu = load_config(CONFIGS / "groupvit_tiny_synth_cocu.yaml")
    assert (clip.model.config, clip.text.mode, clip.data.train) == ("clip-tiny", "none", "runs/demo/world/teacher")
    assert (base.text.mode, base.data.train) == ("caption-nouns", "runs/demo/world/pretrain")
    assert (cocu.text.mode, cocu.data.archive) == ("cocu", "runs/demo/curation/cocu")
    for cfg in (clip, base, cocu):
        assert (cfg.optim.lr, cfg.optim.warmup, cfg.optim.warmup_unit, cfg.optim.clip_grad, cfg.train.batch_size) == (
            5e-4, 0.1, "fraction", 1.0, 64
        )


def test_cli_prints_the_resolved_config_and_rejects_unknown_keys(capsys):
    assert main(["train", "--print-config", str(CONFIGS / "groupvit_tiny_synth_cocu.yaml"), "optim.lr=3e-4"]) == 0
    assert "lr: 0.0003" in capsys.readouterr().out
    assert main(["train", str(CONFIGS / "groupvit_tiny_synth_cocu.yaml"), "text.modes=cocu"]) == 2
    assert "unknown config key 'text.modes'" in capsys.readouterr().err
    assert main(["train", "--list-keys"]) == 0
    assert capsys.readouterr().out.split() == valid_keys()


def test_warmup_then_cosine_schedule():
    s = WarmupCosine(lr=1.0, warmup_lr=0.1, min_lr=0.01, warmup_steps=10, total_steps=110)
    assert s.rate(0) == pytest.approx(0.1) and s.rate(5) == pytest.approx(0.55)
    assert s.rate(10) == pytest.approx(1.0)
    assert s.rate(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s.rate(110) == pytest.approx(0.01) and s.rate(500) == pytest.approx(0.01)
    cfg = load_config(None, [*REQUIRED, "optim.warmup=2", "optim.warmup_unit=epochs"]).optim
    assert warmup_steps(cfg, total_steps=300, steps_per_epoch=10) == 20
    cfg = load_config(None, [*REQUIRED, "optim.warmup=0.1", "optim.warmup_unit=fraction"]).optim
    assert warmup_steps(cfg, total_steps=300, steps_per_epoch=10) == 30


def test_optimizer_follows_the_schedule_and_skips_decay_on_1d_and_token_parameters():
    module = torch.nn.Module()
    module.proj = torch.nn.Linear(3, 3)
    module.group_token = torch.nn.Parameter(torch.zeros(1, 2, 3))
    module.logit_scale = torch.nn.Parameter(torch.tensor(1.0))
    decay, no_decay = param_groups(module, 0.05)
    assert decay["params"] == [module.proj.weight] and decay["weight_decay"] == 0.05
    assert {id(p) for p in no_decay["params"]} == {id(module.proj.bias), id(module.group_token), id(module.logit_scale)}
    schedule = ["optim.lr=1.0", "optim.warmup=2", "optim.warmup_unit=steps", "optim.warmup_lr=0.0"]
    cfg = load_config(None, [*REQUIRED, *schedule])
    opt, sched = build_optimizer(module, cfg.optim, total_steps=4, steps_per_epoch=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 2))])


def test_packaged_configs_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert "groupvit_tiny_synth_cocu.yaml" in packaged_configs()
    by_name = load_config("groupvit_tiny_synth_cocu.yaml")
    by_repo_path = load_config("configs/train/groupvit_tiny_synth_cocu.yaml")
    assert by_name == by_repo_path == load_config(CONFIGS / "groupvit_tiny_synth_cocu.yaml")
    with pytest.raises(FileNotFoundError, match="packaged configs"):
        load_config("elsewhere/groupvit_tiny_synth_cocu.yaml")
