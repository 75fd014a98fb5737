"""The trainer end to end on a hand-made world: outputs, logs, bit-identical resumption, damaged checkpoints,
divergence stop, bf16 autocast, the model seed."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel, GroupViTModel

from cocu.cli import main
from cocu.models.bundle import load_bundle
from cocu.train.checkpoint import CheckpointDamaged, checkpoint_dirs
from cocu.train.config import load_config
from cocu.train.trainer import TrainingDiverged, _model_seed, train
from test_train_world import make_world, tiny_run_overrides

STEPS = 5


def _cfg(world, out, *overrides):
    return load_config(
        None,
        [*tiny_run_overrides(world, out, STEPS), "train.log_every=2", "train.threads=1", "optim.lr=1e-3", *overrides],
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), n=16)


@pytest.fixture(scope="module")
def full_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return train(_cfg(world, out))


def _weights(out):
    return load_file(str(out / "model.safetensors"))


def _last_checkpoint_weights(out):
    return load_file(str(checkpoint_dirs(out / "checkpoints")[-1] / "weights.safetensors"))


def test_run_writes_a_from_pretrained_folder_with_tokenizer_config_and_logs(full_run):
    out = full_run.out_dir
    assert full_run.finished and full_run.steps == STEPS and full_run.num_samples == 16
    assert full_run.steps_per_epoch == 4 and full_run.final_loss is not None
    model = GroupViTModel.from_pretrained(str(out))
    assert model.config.vision_config.image_size == 64
    bundle = load_bundle(out)
    assert bundle.family == "groupvit" and bundle.preprocess.size == 64
    assert bundle.tokenizer("a ball").input_ids[0] == bundle.tokenizer.bos_token_id
    assert (out / "train_config.yaml").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert any((out / "tensorboard").iterdir())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 5]
    keys = {"step", "epoch", "loss", "loss_caption", "loss_multilabel", "lr", "img_per_s", "data_wait_s"}
    keys |= {"logit_scale_caption", "logit_scale_multilabel"}
    assert keys <= set(records[0])
    assert all(r["loss"] == pytest.approx(r["loss_caption"] + r["loss_multilabel"]) for r in records)
    result = json.loads((out / "train_result.json").read_text())
    assert result["steps"] == STEPS and result["finished"] is True
    env = result["environment"]  # what a rerun elsewhere would differ by
    assert env["device"] == "cpu" and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["step-00000004", "step-00000005"]
    sums = (checkpoint_dirs(out / "checkpoints")[-1] / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in sums] == ["weights.safetensors", "state.pt"]


def test_stopped_killed_and_resumed_run_ends_with_bit_identical_weights(world, full_run, tmp_path):
    out = tmp_path / "resumed"
    first = train(_cfg(world, out, "train.max_steps_this_run=2"))  # a job with a step budget
    assert not first.finished and first.steps == 2 and not (out / "model.safetensors").exists()

    def kill_at_step_3(info):
        if info.step == 3:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(world, out), on_step=kill_at_step_3)  # dies between checkpoints 2 and 4
    last = train(_cfg(world, out))  # resume=auto: from step 2
    assert last.finished and last.steps_this_run == STEPS - 2
    expected, got = _weights(full_run.out_dir), _weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    a, b = _last_checkpoint_weights(full_run.out_dir), _last_checkpoint_weights(out)
    assert torch.equal(a["loss.multilabel_logit_scale"], b["loss.multilabel_logit_scale"])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 5]


def _copy_run(run, out):
    """A copy of the finished run ``run`` at ``out`` (its saved config names the new folder)."""
    shutil.copytree(run, out)
    config = out / "train_config.yaml"
    config.write_text(config.read_text().replace(str(run), str(out)))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10  # inside the last tensor's data: the file still loads
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "file"), [(_truncate, "state.pt"), (_flip_a_bit, "weights.safetensors")], ids=["truncated", "bit-flip"]
)
def test_resume_skips_a_damaged_newest_checkpoint_with_a_warning_and_removes_partial_ones(
    world, full_run, tmp_path, caplog, damage, file
):
    out = tmp_path / "copy"
    _copy_run(full_run.out_dir, out)
    damage(out / "checkpoints" / "step-00000005" / file)
    partial = out / "checkpoints" / ".step-00000006.x1y2"  # a save cut short by kill -9
    partial.mkdir()
    (partial / "weights.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="cocu.train.checkpoint"):
        result = train(_cfg(world, out))
    assert result.finished and result.steps_this_run == 1  # step 5 again, from step 4
    assert f"skipping damaged checkpoint {out}/checkpoints/step-00000005: {file}" in caplog.text
    assert not partial.exists()
    expected, got = _weights(full_run.out_dir), _weights(out)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_resuming_from_a_named_damaged_checkpoint_is_a_clear_error(world, full_run, tmp_path):
    out = tmp_path / "copy"
    _copy_run(full_run.out_dir, out)
    chosen = out / "checkpoints" / "step-00000004"
    _flip_a_bit(chosen / "weights.safetensors")
    with pytest.raises(CheckpointDamaged, match="weights.safetensors does not match its SHA-256"):
        train(_cfg(world, out, f"resume={chosen}"))


def test_resuming_with_a_different_config_is_refused(world, full_run):
    with pytest.raises(ValueError, match="optim.lr"):
        train(_cfg(world, full_run.out_dir, "optim.lr=5e-3"))


def test_fresh_start_over_existing_checkpoints_is_refused(world, full_run):
    with pytest.raises(FileExistsError, match="resume=auto"):
        train(_cfg(world, full_run.out_dir, "resume=null"))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(world, tmp_path):
    def poison_after_step_2(info):
        if info.step == 2:
            with torch.no_grad():
                info.module.model.visual_projection[0].weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3 .*checkpoints/step-00000002 is kept"):
        train(_cfg(world, tmp_path, "train.max_steps=4"), on_step=poison_after_step_2)
    kept = load_file(str(tmp_path / "checkpoints" / "step-00000002" / "weights.safetensors"))
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert not (tmp_path / "model.safetensors").exists()


def test_divergence_advice_names_the_newest_intact_checkpoint_never_a_damaged_one(world, tmp_path):
    def damage_checkpoint_4_and_poison(info):
        if info.step == 4:
            _flip_a_bit(tmp_path / "checkpoints" / "step-00000004" / "weights.safetensors")
            with torch.no_grad():
                info.module.model.visual_projection[0].weight.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5 .*checkpoints/step-00000002 is kept"):
        train(_cfg(world, tmp_path, "train.max_steps=6"), on_step=damage_checkpoint_4_and_poison)


def test_model_seed_is_a_python_int_with_the_same_values_on_numpy_1_and_2():
    # values computed under numpy 1.26.4 and 2.4.6 (where `uint64 >> 1` raised TypeError on numpy 1.x)
    assert [_model_seed(0, 0), _model_seed(0, 1), _model_seed(7, 3)] == [
        3291213472928352369, 2122545592250308646, 1729168002221264068
    ]
    assert type(_model_seed(0, 0)) is int


def test_cli_trains_a_clip_with_the_caption_loss_only_under_bf16_autocast(world, tmp_path, capsys):
    out = tmp_path / "clip"
    config = tmp_path / "clip.yaml"
    config.write_text("model:\n  config: clip-tiny\n  bpe_vocab_size: 400\ntext:\n  mode: none\n")
    overrides = [
        f"output={out}", f"data.train={world['train']}", "data.num_workers=0", "train.batch_size=4",
        "train.max_steps=2", "train.threads=1", "train.precision=bf16",
    ]
    seen = set()

    def record_dtypes(module, args, output):
        if isinstance(module, torch.nn.Linear):
            seen.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record_dtypes)
    try:
        assert main(["train", str(config), *overrides]) == 0
    finally:
        hook.remove()
    assert torch.bfloat16 in seen  # autocast ran: the linear layers computed in bf16
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["finished"]
    model = CLIPModel.from_pretrained(str(out))
    assert model.dtype == torch.float32  # autocast computes in bf16, the weights stay float32
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss_multilabel"] is None and record["logit_scale_multilabel"] is None
