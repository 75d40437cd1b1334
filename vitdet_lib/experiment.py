"""One experiment as data: model + data + training + evaluation settings, loaded from YAML.

Loading goes through ``config.load_params``: ``base:`` links merged recursively, strict
per-file checks naming the file and key path, ``--set`` overrides.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitdet_lib.checkpoint.init import InitConfig, resolve_pos_init
from vitdet_lib.config import (
    BASE_KEY,
    ConfigError,
    ModelConfig,
    from_dict,
    load_params,
    sized_vit_params,
    to_dict,
)
from vitdet_lib.io import write_text_atomic

__all__ = ["BASE_KEY", "AmpMode", "DataConfig", "EvalConfig", "ExperimentConfig",
           "GeneratedDataConfig", "GeneratedKind", "TrainBase", "TrainConfig", "load_experiment",
           "save_experiment", "validate_experiment", "validate_train_base"]


class AmpMode(str, enum.Enum):
    """Mixed precision of the forward pass (docs/paper.md, "Training": PyTorch AMP)."""

    OFF = "off"
    BF16 = "bf16"  # autocast to bfloat16; no loss scaling needed (CPU or CUDA)
    FP16 = "fp16"  # autocast to float16 with a GradScaler (CUDA only)


class GeneratedKind(str, enum.Enum):
    """Datasets the library can write itself (docs/design.md, "The miniature study")."""

    SHAPES = "shapes"  # procedural shape scenes: dependency-free, for tests and smoke runs
    FASHION = "fashion"  # scenes composed from Fashion-MNIST test items (the miniature study)


@dataclass
class GeneratedDataConfig:
    """A dataset written on first use into ``DataConfig.cache_dir`` (COCO layout on disk).

    Args:
        kind: which generator.
        num_train, num_val: number of scene images per split.
        num_test: images of a held-out test split (0 = none), from its own item pool, for
            reporting a model selected on val (``engine.run.evaluate(..., split="test")``).
        image_size: side of the square scene images in pixels.
        seed: generator seed; the cache directory name includes every field, so a change of
            any of them writes a new dataset instead of reusing a stale one.
    """

    kind: GeneratedKind = GeneratedKind.SHAPES
    num_train: int = 64
    num_val: int = 16
    num_test: int = 0
    image_size: int = 64
    seed: int = 0

    @property
    def cache_name(self) -> str:
        test = f"{self.num_test}test_" if self.num_test else ""  # names without a test unchanged
        return (f"{self.kind.value}_{self.image_size}px_{self.num_train}train_"
                f"{self.num_val}val_{test}seed{self.seed}")


@dataclass
class DataConfig:
    """Where the images come from: COCO-format files on disk, or a generated dataset.

    Exactly one of (``train_images`` + ``train_annotations`` [+ ``val_*``]) and ``generated``
    must be given. Relative paths are relative to the working directory.

    Args:
        scale_range: large-scale jitter range (docs/paper.md: [0.1, 2.0]) for training images.
        cache_dir: where generated datasets are written.
    """

    train_images: str | None = None
    train_annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    generated: GeneratedDataConfig | None = None
    scale_range: tuple[float, float] = (0.1, 2.0)
    cache_dir: str = "data/generated"


@dataclass
class TrainBase:
    """What every training (fine-tuning, pre-training) configures: the shared loop's settings.

    Args:
        lr, weight_decay, betas: AdamW; norms, biases, position tables and tokens get no
            weight decay.
        epochs: schedule length in epochs of the training set (fractions allowed).
        warmup_epochs: linear warmup length; the half-period cosine spans the whole schedule.
        warmup_factor: lr multiplier at the very first step of warmup.
        batch_size: the EFFECTIVE batch (images per optimizer step), kept whatever the device
            count by gradient accumulation.
        batch_per_device: images per forward pass on one device.
        amp: mixed precision mode.
        seed: seeds model initialisation and (plus the rank) the training stream.
        clip_grad: max total gradient norm; None disables clipping (the norm is logged anyway).
        log_every: optimizer steps between logged lines.
        device: "auto" (CUDA when available), "cpu" or "cuda".
    """

    lr: float = 1.6e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: float = 100.0
    warmup_epochs: float = 0.25
    warmup_factor: float = 0.001
    batch_size: int = 64
    batch_per_device: int = 1
    amp: AmpMode = AmpMode.OFF
    seed: int = 0
    clip_grad: float | None = None
    log_every: int = 20
    device: str = "auto"


def validate_train_base(t: TrainBase) -> None:
    """The checks every training's settings must pass."""
    if t.batch_size < 1 or t.batch_per_device < 1 or t.batch_size % t.batch_per_device:
        raise ConfigError(f"train: batch_size={t.batch_size} must be a positive multiple of "
                          f"batch_per_device={t.batch_per_device}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: {t.device!r} is not one of ['auto', 'cpu', 'cuda']")
    if t.log_every < 1:
        raise ConfigError("train.log_every must be >= 1")


@dataclass
class TrainConfig(TrainBase):
    """The fine-tuning recipe (docs/paper.md, "Training"): :class:`TrainBase` (defaults: the
    paper's) plus the following.

    Args:
        epochs: converted to optimizer steps as ``round(epochs * num_images / batch_size)``.
        eval_at: fractions of the schedule after which to evaluate (1.0 = at the end).
        checkpoint_every: optimizer steps between checkpoints (the final one is always saved).
        keep_checkpoints: how many periodic checkpoints to keep on disk.
        num_workers: data loader worker processes per device.
        max_iters: when set, the schedule length in optimizer steps instead of ``epochs``
            (short test runs with a complete lr schedule).
    """

    eval_at: tuple[float, ...] = (1.0,)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    num_workers: int = 4
    max_iters: int | None = None


@dataclass
class EvalConfig:
    """Evaluation on the validation split.

    Args:
        batch_per_device: images per forward pass.
        max_images: evaluate on the first N validation images only (None = all).
        save_predictions: write the COCO-format results json and metrics of every evaluation
            under ``output_dir/eval/<tag>/``.
    """

    batch_per_device: int = 1
    max_images: int | None = None
    save_predictions: bool = True


@dataclass
class ExperimentConfig:
    """Everything one training or evaluation run needs; ``output_dir`` holds its records."""

    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)  # docs/paper.md's five initialisations
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = ""


# ----------------------------------------------------------------------------- loading


def load_experiment(source: str | os.PathLike[str] | dict[str, Any],
                    overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load an experiment from a params file (following ``base:`` links) or a dict.

    Args:
        source: path of a YAML params file, or the params as a dict (a ``base:`` in a dict is
            resolved relative to the working directory).
        overrides: ``a.b=value`` strings applied last (values parsed as YAML).
    Returns:
        The validated config. When ``output_dir`` is not set anywhere and ``source`` is a file,
        it defaults to ``work_dirs/<file stem>``.
    Raises:
        ConfigError: unknown key (naming the file and key path), wrong type, or a cycle of bases.
    """
    data = load_params(source, ExperimentConfig, overrides, check=_check_moved)
    backbone = data.get("model", {}).get("backbone")
    if isinstance(backbone, dict):  # a named size, expanded once, beneath the keys given
        data["model"]["backbone"] = sized_vit_params(backbone, "model.backbone")
    where = "params dict" if isinstance(source, dict) else f"{source} (merged with its bases)"
    cfg: ExperimentConfig = from_dict(ExperimentConfig, data, where=where)
    if not cfg.output_dir and not isinstance(source, dict):
        cfg.output_dir = str(Path("work_dirs") / Path(source).stem)
    validate_experiment(cfg)
    return cfg


# keys that moved, with where they live now (a clearer error than "unknown key")
MOVED_KEYS: dict[tuple[str, str], str] = {
    ("train", "drop_path"): "model.backbone.drop_path_rate",
}


def _check_moved(data: dict[str, Any], where: str) -> None:
    for (section, key), new in MOVED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(f"{where}.{section}.{key}: this key moved; set {new} instead")


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Checks across fields that the schema alone cannot express."""
    d, t = cfg.data, cfg.train
    resolve_pos_init(cfg.init, cfg.model.backbone)  # T4 options must fit the model config
    has_files = d.train_images is not None or d.train_annotations is not None
    if has_files == (d.generated is not None):
        raise ConfigError("data: give either train_images + train_annotations (COCO files) or "
                          "generated, not both and not neither")
    if has_files and (d.train_images is None or d.train_annotations is None):
        raise ConfigError("data: train_images and train_annotations go together")
    if (d.val_images is None) != (d.val_annotations is None):
        raise ConfigError("data: val_images and val_annotations go together")
    validate_train_base(t)
    if not all(0.0 < f <= 1.0 for f in t.eval_at):
        raise ConfigError(f"train.eval_at: fractions must lie in (0, 1], got {list(t.eval_at)}")
    if t.epochs <= 0 and t.max_iters is None:
        raise ConfigError("train.epochs must be positive (or set train.max_iters)")
    if t.checkpoint_every < 1 or t.log_every < 1 or t.keep_checkpoints < 1:
        raise ConfigError("train.checkpoint_every, log_every and keep_checkpoints must be >= 1")


def save_experiment(cfg: ExperimentConfig, path: str | os.PathLike[str]) -> None:
    """Write the complete config (no ``base:``) as YAML, atomically; it loads back equal."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
