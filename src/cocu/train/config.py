"""Training configuration: nested dataclasses are the schema, YAML files and ``key=value`` overrides the input.

``load_config(path, overrides)`` reads a YAML file, applies command-line overrides such as
``optim.lr=1e-3`` or ``data.train=/data/c3-{00000..00275}.tar`` (values parsed as YAML scalars or flow
lists), checks every key against the dataclasses below and every value against its field type, and
returns a :class:`TrainConfig`. An unknown or misspelt key is an error listing the valid keys of its
section; nothing is silently ignored. ``save_config`` writes the resolved config (all defaults filled in)
as YAML, which ``load_config`` reads back to an equal object.

PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string; float fields therefore also accept
strings that parse as floats.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from cocu.utils.atomic import atomic_write_text

TEXT_MODES: tuple[str, ...] = ("caption-nouns", "cocu", "oracle", "none")
ORACLE_PICKS: tuple[str, ...] = ("weighted", "uniform")
MISSING_ARCHIVE: tuple[str, ...] = ("drop", "caption")
WARMUP_UNITS: tuple[str, ...] = ("epochs", "steps", "fraction")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
NORMALIZE: tuple[str, ...] = ("clip", "imagenet")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    """``config``: a named model config (``cocu.models.factory.model_config_names()``); ``tokenizer``: a
    transformers tokenizer name or folder, or ``None`` to train a byte-level BPE of ``bpe_vocab_size``
    tokens on the training captions plus the concept vocabulary (saved beside the model)."""

    config: str = "groupvit-tiny"
    tokenizer: str | None = None
    bpe_vocab_size: int = 4096


@dataclass
class AugmentConfig:
    """Random resized crop with area fraction in ``[scale_min, 1]``, horizontal flip, colour jitter;
    ``randaugment``: a RandAugment spec in timm's notation (``rand-m9-mstd0.5-inc1``, GroupViT's; replaces
    the colour jitter) or ``None``; ``erase_prob``: probability of random erasing (GroupViT: 0.25)."""

    scale_min: float = 0.08
    flip: bool = True
    color_jitter: float = 0.4
    randaugment: str | None = None
    erase_prob: float = 0.0


@dataclass
class DataConfig:
    """``train``: webdataset tar shards (brace pattern, directory, file or list); ``archive``: the curated
    concept archive (a curation run folder or parquet file, as ``cocu.curation.archive.read_archive``
    takes), needed by ``text.mode: cocu``. ``num_workers``: DataLoader worker processes (0 = load in
    the training process). ``normalize``: the image mean/std trained with and written into the model
    folder's ``preprocessor_config.json`` (``clip`` or ``imagenet``, GroupViT's)."""

    train: str | list[str] | None = None
    archive: str | None = None
    normalize: str = "clip"
    num_workers: int = 1
    prefetch_factor: int = 4
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TextConfig:
    """What the ``num_labels`` (L) extra texts of a sample are (see ``cocu.train.data``)."""

    mode: str = "caption-nouns"
    num_labels: int = 3
    vocab: str | None = None
    sampling: str = "cluster"
    tau: float = 0.1
    oracle_pick: str = "weighted"
    missing_archive: str = "drop"


@dataclass
class OptimConfig:
    """AdamW; linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup`` (in ``warmup_unit``: epochs,
    steps, or a fraction of all steps), then cosine down to ``min_lr``; gradient norm clipped at
    ``clip_grad`` (0 = off)."""

    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup: float = 0.1
    warmup_unit: str = "fraction"
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    clip_grad: float = 1.0


@dataclass
class RunConfig:
    """``batch_size`` is global (split over data-parallel ranks). The run lasts ``max_steps`` steps when
    set, else ``epochs`` epochs. ``max_steps_this_run`` stops early (after a checkpoint) without
    changing the schedule, for jobs with a time limit; ``resume: auto`` continues later."""

    batch_size: int = 64
    epochs: int = 10
    max_steps: int | None = None
    max_steps_this_run: int | None = None
    precision: str = "fp32"
    device: str = "auto"
    threads: int | None = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10


@dataclass
class TrainConfig:
    """The whole run. ``output``: the run folder; ``resume``: ``auto`` (latest checkpoint in
    ``output/checkpoints`` if any), ``null`` (start fresh; an existing checkpoint is then an error), or a
    checkpoint folder."""

    output: str | None = None
    seed: int = 0
    resume: str | None = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)


RUNTIME_KEYS: frozenset[str] = frozenset(
    {
        "resume",
        "data.num_workers",
        "data.prefetch_factor",
        "train.max_steps_this_run",
        "train.threads",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.log_every",
        "train.device",
    }
)
"""Keys that may change between a run and its resumption (they do not change the trained weights)."""


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and, for floats, converted to) the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                errors.append(_type_name(option))
        raise ConfigError(f"{key}: expected {' or '.join(errors)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(item, item_tp, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Instantiate the dataclass ``cls`` from a mapping, recursing into sections."""
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys in {where}: {', '.join(names)}"
        )
    values = {}
    for name in names:
        if name not in raw:
            continue
        tp = hints[name]
        key = f"{prefix}{name}"
        values[name] = _build(tp, raw[name], f"{key}.") if _is_section(tp) else _coerce(raw[name], tp, key)
    return cls(**values)


def valid_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """All dotted leaf keys of the schema, in declaration order."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            keys.extend(valid_keys(tp, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in the nested mapping ``raw``; ``value`` is parsed as a YAML scalar or flow list."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. optim.lr=1e-3)")
    key, text = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {override!r} has an empty key part")
    known = valid_keys()
    inside = [k for k in known if k.startswith(key + ".")]
    if inside:
        raise ConfigError(f"{key} is a section, not a value; set its keys instead: {', '.join(inside)}")
    if key not in known:
        section = ".".join(parts[:-1])
        while section and not any(k.startswith(section + ".") for k in known):
            section = section.rpartition(".")[0]
        scope = [k for k in known if k.startswith(section + ".")] if section else known
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(scope)}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse {text!r} as a YAML value ({err})") from err
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: expected a mapping of keys, got {child!r}")
        node = child
    node[parts[-1]] = value


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check values that the types alone do not pin down; returns ``cfg``."""

    def choice(key: str, value: str, allowed: Sequence[str]) -> None:
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")

    def positive(key: str, value: float | int) -> None:
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")

    if cfg.output is None:
        raise ConfigError("output is not set; pass output=/path/to/run")
    if cfg.data.train is None:
        raise ConfigError("data.train is not set; pass e.g. data.train=/data/c3-{00000..00275}.tar")
    choice("text.mode", cfg.text.mode, TEXT_MODES)
    choice("text.oracle_pick", cfg.text.oracle_pick, ORACLE_PICKS)
    choice("text.missing_archive", cfg.text.missing_archive, MISSING_ARCHIVE)
    choice("optim.warmup_unit", cfg.optim.warmup_unit, WARMUP_UNITS)
    choice("train.precision", cfg.train.precision, PRECISIONS)
    choice("train.device", cfg.train.device, DEVICES)
    choice("data.normalize", cfg.data.normalize, NORMALIZE)
    from cocu.curation.sampling import SAMPLINGS

    choice("text.sampling", cfg.text.sampling, SAMPLINGS)
    if cfg.text.mode == "cocu" and cfg.data.archive is None:
        raise ConfigError("text.mode=cocu needs data.archive (the curation run folder or archive parquet)")
    if cfg.text.mode != "none":
        positive("text.num_labels", cfg.text.num_labels)
    positive("text.tau", cfg.text.tau)
    positive("model.bpe_vocab_size", cfg.model.bpe_vocab_size)
    positive("optim.lr", cfg.optim.lr)
    positive("optim.eps", cfg.optim.eps)
    positive("train.batch_size", cfg.train.batch_size)
    positive("train.epochs", cfg.train.epochs)
    positive("train.checkpoint_every", cfg.train.checkpoint_every)
    positive("train.keep_checkpoints", cfg.train.keep_checkpoints)
    positive("train.log_every", cfg.train.log_every)
    positive("data.prefetch_factor", cfg.data.prefetch_factor)
    optional = {
        "train.max_steps": cfg.train.max_steps,
        "train.max_steps_this_run": cfg.train.max_steps_this_run,
        "train.threads": cfg.train.threads,
    }
    for key, value in optional.items():
        if value is not None:
            positive(key, value)
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be >= 0, got {cfg.data.num_workers}")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {cfg.optim.betas}")
    if not 0.0 < cfg.data.augment.scale_min <= 1.0:
        raise ConfigError(f"data.augment.scale_min: must be in (0, 1], got {cfg.data.augment.scale_min}")
    if not 0.0 <= cfg.data.augment.erase_prob <= 1.0:
        raise ConfigError(f"data.augment.erase_prob: must be in [0, 1], got {cfg.data.augment.erase_prob}")
    if cfg.data.augment.randaugment is not None:
        from cocu.data.randaugment import RandAugment

        try:
            RandAugment.from_spec(cfg.data.augment.randaugment)
        except ValueError as err:
            raise ConfigError(f"data.augment.randaugment: {err}") from None
    non_negative = {
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.warmup": cfg.optim.warmup,
        "optim.warmup_lr": cfg.optim.warmup_lr,
        "optim.min_lr": cfg.optim.min_lr,
        "optim.clip_grad": cfg.optim.clip_grad,
        "data.augment.color_jitter": cfg.data.augment.color_jitter,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    if cfg.optim.warmup_unit == "fraction" and cfg.optim.warmup > 1.0:
        raise ConfigError(f"optim.warmup: a fraction of the run must be <= 1, got {cfg.optim.warmup}")
    return cfg


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    return validate(_build(TrainConfig, raw, ""))


def packaged_configs() -> list[str]:
    """File names of the training configs shipped with the package (``configs/train/`` in the repository)."""
    folder = resources.files("cocu").joinpath("configs", "train")
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def resolve_config_path(path: str | Path) -> Path:
    """``path`` if it is a file; else, for a bare file name or a ``configs/train/NAME`` path (as the docs
    write them, valid from the repository root), the packaged config ``NAME``, so they work from anywhere."""
    given = Path(path)
    if given.is_file():
        return given
    if given.parent.parts in ((), ("configs", "train")) and given.name in packaged_configs():
        return Path(str(resources.files("cocu").joinpath("configs", "train", given.name)))
    raise FileNotFoundError(
        f"training config {path} not found; give a YAML file or one of the packaged configs: "
        f"{', '.join(packaged_configs())}"
    )


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read the YAML file ``path`` (``None``: defaults only; see :func:`resolve_config_path`), apply
    ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        text = resolve_config_path(path).read_text("utf-8")
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        raw = loaded or {}
    for override in overrides:
        apply_override(raw, override)
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def changed_keys(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Keys whose values differ and that matter for the trained weights (not in :data:`RUNTIME_KEYS`)."""
    a, b = flatten(config_to_dict(old)), flatten(config_to_dict(new))
    return [k for k in a if k not in RUNTIME_KEYS and a[k] != b.get(k)]
