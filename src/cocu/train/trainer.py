"""Pre-train GroupViT (or a small CLIP) on image-caption shards with curated concepts: ``train(cfg)``.

Output folder ``cfg.output``::

    config.json, model.safetensors, tokenizer files, preprocessor_config.json
                          the final model (``cocu.models.bundle.save_bundle``): GroupViTModel / CLIPModel
                          .from_pretrained(OUT) and cocu.models.bundle.load_bundle(OUT) load it directly
    train_config.yaml     the resolved config
    metrics.jsonl, tensorboard/, loss_curve.png
    train_result.json     TrainResult as JSON (written when the run finishes)
    checkpoints/step-*/   resumable checkpoints (cocu.train.checkpoint), each with a SHA256SUMS file
    .cocu.lock            the run's folder lock (cocu.utils.lock), held by rank 0 while the run lasts
    tokenizer/            the BPE tokenizer trained for this run (when model.tokenizer is null)
    data_index.npz        the shard index (cocu.train.shards), reused by a resumed run

One step: the rank's batch is encoded (image features from ``get_image_features``: the pooled group
tokens through the projection MLP; text features of the captions and the L prompt texts in one
``get_text_features`` call), under bf16 autocast if configured; the loss (``cocu.train.loss``, always in
float32) is evaluated on the features gathered from all ranks; under torchrun the module runs inside
``DistributedDataParallel``, whose bucketed all-reduce overlaps backward (``cocu.train.distributed``);
gradients are clipped and AdamW steps with the warm-up + cosine schedule. Checkpoints are written every
``train.checkpoint_every`` steps, at each epoch end and when the run stops; with ``resume: auto`` a
killed run restarted with the same config ends with bit-identical weights (the data order, augmentation
and concept sampling are functions of (seed, step), and the checkpoint holds every rank's RNG state for
the model's Gumbel noise); a damaged newest checkpoint is skipped for the newest intact one, with a
warning. A non-finite loss or gradient norm stops the run with :class:`TrainingDiverged`, naming the
newest intact checkpoint. The output folder is locked (``cocu.utils.lock``) for the whole run: a second
``cocu train`` into it fails at once with :class:`cocu.utils.lock.FolderLocked` naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cocu.data.skips import SkipCounter
from cocu.data.transforms import NORMALIZATIONS
from cocu.models.bundle import save_bundle
from cocu.models.factory import build_model, get_model_spec
from cocu.models.features import pooled_features
from cocu.text.tokenizer import load_tokenizer, train_bpe_tokenizer
from cocu.train.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointDamaged,
    damage,
    latest_checkpoint,
    latest_intact_checkpoint,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)
from cocu.train.config import TrainConfig, changed_keys, config_from_dict, save_config
from cocu.train.data import Batch, TrainData, make_loader, prepare_data
from cocu.train.distributed import (
    DistContext,
    all_true,
    barrier,
    broadcast_from_main,
    gather_rows,
    init_distributed,
    shutdown,
    wrap_data_parallel,
)
from cocu.train.loss import CocuLoss, LossOutput
from cocu.train.metrics import LOSS_CURVE_FILE, METRICS_FILE, MetricsLogger, plot_loss_curve, read_metrics
from cocu.train.optim import build_optimizer
from cocu.utils.atomic import atomic_write_json
from cocu.utils.environment import environment
from cocu.utils.lock import FolderLocked, folder_lock

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"
RESULT_FILE = "train_result.json"
TOKENIZER_DIR = "tokenizer"
INDEX_FILE = "data_index.npz"
_TAG_MODEL_RNG = 3


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN or infinite."""


@dataclass
class TrainResult:
    """``steps``: global steps done (of ``total_steps``); ``finished``: the schedule is complete and the
    final model is saved in ``out_dir``; ``final_loss``: the mean loss of the last logging window;
    ``images_per_s``: global throughput of this invocation; ``environment``: versions, CPU kernels, device
    and threads of this invocation (:mod:`cocu.utils.environment`: what makes a rerun elsewhere differ)."""

    out_dir: Path
    steps: int
    total_steps: int
    steps_this_run: int
    finished: bool
    final_loss: float | None
    wall_time_s: float
    images_per_s: float
    num_samples: int
    steps_per_epoch: int
    checkpoint: Path | None
    skipped: dict[str, int] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["checkpoint"] = str(self.checkpoint) if self.checkpoint is not None else None
        return out


@dataclass
class StepInfo:
    """Passed to ``train``'s ``on_step`` callback after each step (``step`` = steps done)."""

    step: int
    epoch: int
    loss: float
    module: nn.Module


class TrainModule(nn.Module):
    """The transformers model plus the loss's own temperature; the unit that is optimised, checkpointed and
    (under torchrun) wrapped in ``DistributedDataParallel``. ``bf16``: features under bfloat16 autocast."""

    def __init__(self, model: nn.Module, multilabel: bool, bf16: bool = False) -> None:
        super().__init__()
        self.model = model
        self.loss = CocuLoss(multilabel)
        self.bf16 = bf16

    def forward(self, batch: Batch) -> LossOutput:
        """The loss of the global batch, from this rank's ``batch`` (the loss itself in float32)."""
        with torch.autocast(batch.images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            image, text = self.features(batch)
        return self.compute_loss(image, text)

    def features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features [b,d] and text features [b,1+L,d] (unnormalised)."""
        b = batch.images.shape[0]
        image = pooled_features(self.model.get_image_features(pixel_values=batch.images))  # [b,d]
        text = pooled_features(self.model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask))
        return image, text.reshape(b, 1 + batch.num_labels, -1)  # [b,1+L,d]

    def scales(self) -> tuple[float, float | None]:
        cap = float(self.model.logit_scale.detach().exp().clamp(max=100.0))
        ml = self.loss.multilabel_logit_scale
        return cap, (float(ml.detach().exp().clamp(max=100.0)) if ml is not None else None)

    def compute_loss(self, image: torch.Tensor, text: torch.Tensor) -> LossOutput:
        labels = text[:, 1:] if text.shape[1] > 1 else None  # [b,L,d]
        return self.loss(image, text[:, 0], labels, self.model.logit_scale)


def _model_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s torch generator (63 bits; the same on numpy 1.x and 2.x)."""
    state = np.random.SeedSequence([seed, _TAG_MODEL_RNG, rank]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def _resolve_checkpoint(cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from (verified against its checksums), or ``None`` to start fresh."""
    root = out / CHECKPOINT_DIR
    if cfg.resume == "auto":
        found = latest_intact_checkpoint(root)
        if found is None and latest_checkpoint(root) is not None:
            logger.warning("no intact checkpoint under %s: training starts from step 0", root)
        return found
    if cfg.resume is None:
        found = latest_checkpoint(root)
        if found is not None:
            raise FileExistsError(
                f"{out} already holds checkpoint {found.name}; pass resume=auto to continue it, or choose a new output"
            )
        return None
    path = Path(cfg.resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint folder")
    problem = damage(path)
    if problem is not None:
        raise CheckpointDamaged(f"resume={cfg.resume}: the checkpoint is damaged ({problem}); choose another")
    return path


def _agreed(ctx: DistContext, work: Callable[[], object]) -> object:
    """``work()`` on rank 0, its result on every rank; the clear errors it raises (a locked folder, a missing
    or damaged checkpoint) are raised on every rank instead of leaving the other ranks waiting."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = work()
        except (FolderLocked, FileNotFoundError, FileExistsError, ValueError) as err:
            error = err
    result, shared_error = broadcast_from_main((result, error), ctx)
    if error is not None:
        raise error
    if shared_error is not None:
        raise shared_error
    return result


def _check_same_config(cfg: TrainConfig, out: Path) -> None:
    import yaml

    saved_file = out / CONFIG_FILE
    if not saved_file.is_file():
        return
    saved = config_from_dict(yaml.safe_load(saved_file.read_text("utf-8")))
    diff = changed_keys(saved, cfg)
    if diff:
        raise ValueError(
            f"cannot resume {out}: the config differs from {saved_file} in {', '.join(diff)} "
            "(a resumed run must train the same thing; use a new output folder)"
        )


def _tokenizer(cfg: TrainConfig, data: TrainData, out: Path, ctx: DistContext, resuming: bool, max_length: int):
    if cfg.model.tokenizer is not None:
        return load_tokenizer(cfg.model.tokenizer, max_length=max_length)
    folder = out / TOKENIZER_DIR
    if ctx.is_main and not (resuming and folder.is_dir()):
        tok = train_bpe_tokenizer(data.tokenizer_corpus(), vocab_size=cfg.model.bpe_vocab_size, max_length=max_length)
        staging = out / f".{TOKENIZER_DIR}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        tok.save_pretrained(staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        logger.info("trained a BPE tokenizer of %d tokens on the training captions: %s", len(tok), folder)
    barrier(ctx)
    return load_tokenizer(str(folder), max_length=max_length)


def _warn_legacy_pooling(model: nn.Module) -> None:
    """transformers' CLIP/GroupViT text encoders treat ``eos_token_id == 2`` as the legacy CLIP config and
    then pool at the highest token id of each text instead of at its end-of-text token."""
    if getattr(model.config.text_config, "eos_token_id", None) == 2:
        logger.warning(
            "the tokenizer's end-of-text id is 2: transformers then pools each text at its highest token id "
            "(legacy CLIP behaviour), not at the end-of-text token; give <|endoftext|> another id"
        )


def save_final_model(model: nn.Module, tokenizer, out: Path, image_size: int, normalize: str = "clip") -> None:
    """``save_bundle`` into a staging folder, then move its files into ``out`` (each rename atomic);
    ``normalize``: the mean/std the model was trained with (``NORMALIZATIONS``), recorded in the folder."""
    staging = out / ".bundle.staging"
    shutil.rmtree(staging, ignore_errors=True)
    mean, std = NORMALIZATIONS[normalize]
    save_bundle(model, tokenizer, staging, image_size, mean=mean, std=std)
    for item in staging.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


def _generators(device: torch.device) -> dict[str, tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]]:
    """The random generators whose states a checkpoint keeps for every rank, as (get, set): torch's CPU
    generator, and on CUDA the device's (where the model's Gumbel noise is drawn)."""
    found = {"torch": (torch.get_rng_state, torch.set_rng_state)}
    if device.type == "cuda":
        found["cuda"] = (partial(torch.cuda.get_rng_state, device), partial(torch.cuda.set_rng_state, device=device))
    return found


def _rng_rows(ctx: DistContext) -> dict[str, torch.Tensor]:
    """Every rank's generator states: ``{name: uint8 [world, n]}`` (the same on all ranks)."""
    return {name: gather_rows(get(), ctx) for name, (get, _) in _generators(ctx.device).items()}


def _restore_rng(rng: dict[str, torch.Tensor], ctx: DistContext) -> None:
    for name, (_, put) in _generators(ctx.device).items():
        states = rng.get(name)
        if states is None or states.shape[0] != ctx.world:
            logger.warning(
                "the checkpoint holds %s RNG states for %s rank(s), this run has %d: those random draws restart "
                "from the seed (the run is no longer identical to an uninterrupted one)",
                name,
                None if states is None else states.shape[0],
                ctx.world,
            )
            continue
        put(states[ctx.rank].clone())


def batch_to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its tensors on ``device`` (the same tensors when already there, as on CPU); the
    copies from the loader's pinned memory (pinned when training on CUDA) do not block."""
    return replace(
        batch,
        images=batch.images.to(device, non_blocking=True),
        input_ids=batch.input_ids.to(device, non_blocking=True),
        attention_mask=batch.attention_mask.to(device, non_blocking=True),
    )


class _Window:
    """Running means of the losses and the throughput between two log records."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps, self.loss, self.caption, self.multilabel = 0, 0.0, 0.0, 0.0
        self.data_wait, self.start = 0.0, time.perf_counter()

    def add(self, out: LossOutput, data_wait: float) -> None:
        self.steps += 1
        self.data_wait += data_wait
        self.loss += float(out.total.detach())
        self.caption += float(out.caption.detach())
        self.multilabel += float(out.multilabel.detach()) if out.multilabel is not None else math.nan


def train(cfg: TrainConfig, on_step: Callable[[StepInfo], None] | None = None) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; see the module docstring.

    ``on_step`` is called on every rank after each step (after any checkpoint of that step); an
    exception it raises stops the run (used to test resumption). Under ``torchrun`` every process calls
    this; only rank 0 writes files other than checkpoints' contents it gathers.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    assert cfg.output is not None
    ctx = init_distributed(cfg.train.device)
    try:
        with _output_lock(Path(cfg.output), ctx):
            return _train(cfg, ctx, on_step)
    finally:
        shutdown(ctx)


@contextlib.contextmanager
def _output_lock(out: Path, ctx: DistContext) -> Iterator[None]:
    """Rank 0 holds ``out``'s folder lock for the whole run; if another run holds it, every rank raises
    :class:`FolderLocked`. Only rank 0 locks because only rank 0 writes into ``out``; on a shared file
    system its lock also keeps out a second job's ranks on other machines."""
    with contextlib.ExitStack() as stack:
        _agreed(ctx, lambda: stack.enter_context(folder_lock(out, purpose="cocu train")))
        yield


def _train(cfg: TrainConfig, ctx: DistContext, on_step: Callable[[StepInfo], None] | None) -> TrainResult:
    started = time.perf_counter()
    assert cfg.output is not None
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)

    def pick_checkpoint() -> Path | None:
        remove_partial_checkpoints(out / CHECKPOINT_DIR)  # safe: this run holds the folder's lock
        found = _resolve_checkpoint(cfg, out)
        if found is not None:
            _check_same_config(cfg, out)
        return found

    checkpoint = _agreed(ctx, pick_checkpoint)
    if ctx.is_main:
        save_config(cfg, out / CONFIG_FILE)
        data = prepare_data(cfg, str(out / INDEX_FILE), progress=True)
    barrier(ctx)
    if not ctx.is_main:
        data = prepare_data(cfg, str(out / INDEX_FILE), progress=False)
    spec = get_model_spec(cfg.model.config)
    tokenizer = _tokenizer(cfg, data, out, ctx, checkpoint is not None, spec.max_text_length)
    model = build_model(cfg.model.config, tokenizer, seed=cfg.seed)
    _warn_legacy_pooling(model)
    bf16 = cfg.train.precision == "bf16"
    module = TrainModule(model, multilabel=data.texts.labels_per_sample > 0, bf16=bf16).to(ctx.device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.train.batch_size // ctx.world < 2 and spec.family == "groupvit":
        raise ValueError("GroupViT's projection BatchNorm needs at least 2 samples per rank; raise train.batch_size")
    steps_per_epoch = len(data) // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(data)} training samples do not fill one batch of {cfg.train.batch_size}")
    total = cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * steps_per_epoch
    optimizer, scheduler = build_optimizer(module, cfg.optim, total, steps_per_epoch)
    torch.manual_seed(_model_seed(cfg.seed, ctx.rank))
    start = 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, module, optimizer, scheduler, ctx.device, verify=False)
        start = state.step
        _restore_rng(state.rng, ctx)
        logger.info("resuming from %s (step %d of %d)", checkpoint, start, total)
    end = total if cfg.train.max_steps_this_run is None else min(total, start + cfg.train.max_steps_this_run)
    loader = make_loader(
        data,
        cfg,
        tokenizer,
        spec.image_size,
        spec.max_text_length,
        rank=ctx.rank,
        world=ctx.world,
        start_step=start,
        end_step=end,
        pin_memory=ctx.device.type == "cuda",
    )
    metrics = MetricsLogger(out, start if checkpoint is not None else None) if ctx.is_main else None
    if metrics is not None and checkpoint is None:
        logger.info("training %d steps (%d per epoch, %d samples) into %s", total, steps_per_epoch, len(data), out)
    parallel = wrap_data_parallel(module, ctx)
    skips = SkipCounter()
    window = _Window()
    step, last_checkpoint, last_loss = start, checkpoint, None
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not ctx.is_main, dynamic_ncols=True)
    run_start = time.perf_counter()
    batches = None
    try:
        batches = iter(loader)
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            waited = time.perf_counter() - waited
            epoch = step // steps_per_epoch
            for reason, key, source, detail in batch.skipped:
                skips.add(reason, key, source, detail)
            batch = batch_to_device(batch, ctx.device)
            out_loss = parallel(batch)
            loss_value = float(out_loss.total.detach())
            if not all_true(math.isfinite(loss_value), ctx):
                raise TrainingDiverged(_diverged_message("loss", loss_value, step, epoch, out))
            optimizer.zero_grad(set_to_none=True)
            out_loss.total.backward()  # under DDP: gradients averaged over ranks, overlapping backward
            if cfg.optim.clip_grad > 0:
                norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad))
                if not math.isfinite(norm):
                    raise TrainingDiverged(_diverged_message("gradient norm", norm, step, epoch, out))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            step += 1
            window.add(out_loss, waited)
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == end:
                last_loss = _log(metrics, window, step, epoch, lr, module, cfg.train.batch_size, bar, run_start)
            if step % cfg.train.checkpoint_every == 0 or step % steps_per_epoch == 0 or step == end:
                epoch_done = step // steps_per_epoch
                last_checkpoint = _checkpoint(out, step, epoch_done, module, optimizer, scheduler, ctx, cfg)
            if on_step is not None:
                on_step(StepInfo(step=step, epoch=epoch, loss=loss_value, module=module))
    finally:
        batches = None  # lets the loader's worker processes shut down even when an exception propagates
        bar.close()
        if metrics is not None:
            metrics.close()
    elapsed = time.perf_counter() - run_start
    finished = step >= total
    if ctx.is_main and finished:
        save_final_model(module.model, tokenizer, out, spec.image_size, cfg.data.normalize)
        plot_loss_curve(out / METRICS_FILE, out / LOSS_CURVE_FILE)
    if last_loss is None and ctx.is_main:
        records = read_metrics(out / METRICS_FILE)
        last_loss = records[-1]["loss"] if records else None
    skipped = dict(data.skips)
    for reason, count in skips.counts.items():
        skipped[reason] = skipped.get(reason, 0) + count
    result = TrainResult(
        out_dir=out,
        steps=step,
        total_steps=total,
        steps_this_run=step - start,
        finished=finished,
        final_loss=last_loss,
        wall_time_s=time.perf_counter() - started,
        images_per_s=(step - start) * cfg.train.batch_size / elapsed if elapsed > 0 and step > start else 0.0,
        num_samples=len(data),
        steps_per_epoch=steps_per_epoch,
        checkpoint=last_checkpoint,
        skipped=skipped,
        environment=environment(ctx.device),
    )
    if ctx.is_main and finished:
        atomic_write_json(out / RESULT_FILE, result.to_json())
    barrier(ctx)
    return result


def _diverged_message(what: str, value: float, step: int, epoch: int, out: Path) -> str:
    """The advice names the newest checkpoint that passes its checksums now, never a damaged one."""
    checkpoint = latest_intact_checkpoint(out / CHECKPOINT_DIR)
    keep = (
        f"the last good checkpoint {checkpoint} is kept (resume=auto restarts from it)"
        if checkpoint is not None
        else "no intact checkpoint is kept"
    )
    return (
        f"the {what} is {value} at step {step + 1} (epoch {epoch}); training stopped and {keep}. "
        "Try a lower optim.lr, a longer optim.warmup or optim.clip_grad > 0."
    )


def _log(
    metrics: MetricsLogger | None,
    window: _Window,
    step: int,
    epoch: int,
    lr: float,
    module: TrainModule,
    batch_size: int,
    bar: tqdm,
    run_start: float,
) -> float:
    """Write one metrics record (rank 0) and start a new window; returns the window's mean loss."""
    n = window.steps
    mean_loss = window.loss / n
    if metrics is not None:
        elapsed = time.perf_counter() - window.start
        cap, ml = module.scales()
        record = {
            "step": step,
            "epoch": epoch,
            "loss": mean_loss,
            "loss_caption": window.caption / n,
            "loss_multilabel": None if math.isnan(window.multilabel) else window.multilabel / n,
            "lr": lr,
            "logit_scale_caption": cap,
            "logit_scale_multilabel": ml,
            "img_per_s": n * batch_size / elapsed if elapsed > 0 else None,
            "data_wait_s": window.data_wait / n,
            "time_s": time.perf_counter() - run_start,
        }
        metrics.log(record)
        bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
    window.reset()
    return mean_loss


def _checkpoint(
    out: Path,
    step: int,
    epoch: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ctx: DistContext,
    cfg: TrainConfig,
) -> Path:
    """Gather every rank's RNG state; rank 0 writes the checkpoint; all wait for it."""
    rng = _rng_rows(ctx)
    path = out / CHECKPOINT_DIR / f"step-{step:08d}"
    if ctx.is_main:
        keep = cfg.train.keep_checkpoints
        path = save_checkpoint(out / CHECKPOINT_DIR, step, epoch, module, optimizer, scheduler, rng, keep)
    barrier(ctx)
    return path
