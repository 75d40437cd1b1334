"""One experiment as data: model + data + training + evaluation settings, loaded from YAML.

A params file may start from another one with ``base: relative/path.yaml`` and then state only
what differs; bases are merged recursively (mappings merge key by key, everything else is
replaced). Loading is strict: each file is checked on its own against the schema, so an unknown
key is reported with the file it came from and its full key path, e.g.
``params/x.yaml: train.lr_rate: unknown key``.
"""
from __future__ import annotations

import copy
import enum
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitdet_lib.checkpoint.init import InitConfig, resolve_pos_init
from vitdet_lib.config import ConfigError, ModelConfig, apply_overrides, from_dict, to_dict
from vitdet_lib.errors import yaml_errors
from vitdet_lib.io import write_text_atomic

BASE_KEY = "base"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; params files mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


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
class TrainConfig:
    """The fine-tuning recipe (docs/paper.md, "Training").

    Args:
        lr, weight_decay, betas: AdamW; norms, biases and position tables get no weight decay.
        epochs: schedule length in epochs of the training set (fractions allowed); converted to
            optimizer steps as ``round(epochs * num_images / batch_size)``.
        warmup_epochs: linear warmup length (the paper's 0.25 epoch).
        warmup_factor: lr multiplier at the very first step of warmup.
        batch_size: the EFFECTIVE batch (images per optimizer step, the paper's 64), kept
            whatever the device count by gradient accumulation.
        batch_per_device: images per forward pass on one device.
        drop_path: overrides ``model.backbone.drop_path_rate`` when set (the tuning protocol
            varies it per run).
        amp: mixed precision mode.
        eval_at: fractions of the schedule after which to evaluate (1.0 = at the end).
        checkpoint_every: optimizer steps between checkpoints (the final one is always saved).
        keep_checkpoints: how many periodic checkpoints to keep on disk.
        seed: seeds model initialisation and (plus the rank) the training stream.
        num_workers: data loader worker processes per device.
        max_iters: when set, the schedule length in optimizer steps instead of ``epochs``
            (short test runs with a complete lr schedule).
        clip_grad: max total gradient norm; None disables clipping (the norm is logged anyway).
        log_every: optimizer steps between lines of ``metrics.jsonl``.
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
    drop_path: float | None = None
    amp: AmpMode = AmpMode.OFF
    eval_at: tuple[float, ...] = (1.0,)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int = 4
    max_iters: int | None = None
    clip_grad: float | None = None
    log_every: int = 20
    device: str = "auto"


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
    if isinstance(source, dict):
        data = _resolve_bases(copy.deepcopy(source), "params dict: params", Path.cwd(), ())
    else:
        data = _load_file(Path(source), ())
    if overrides:
        # re-spelled as JSON (valid YAML) so "train.lr=3e-4" means a float here as in files
        overrides = [_normalise_override(item) for item in overrides]
        # checked on their own first so the error names the override, not the merged whole
        delta = apply_overrides({}, list(overrides))
        from_dict(ExperimentConfig, delta, where="--set overrides: params")
        apply_overrides(data, list(overrides))
    where = "params dict" if isinstance(source, dict) else f"{source} (merged with its bases)"
    cfg: ExperimentConfig = from_dict(ExperimentConfig, data, where=where)
    if not cfg.output_dir and not isinstance(source, dict):
        cfg.output_dir = str(Path("work_dirs") / Path(source).stem)
    validate_experiment(cfg)
    return cfg


def _load_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"cycle of base: links: {cycle}")
    if not path.is_file():
        hint = f" (base of {chain[-1]})" if chain else ""
        raise ConfigError(f"params file {path} not found{hint}")
    with open(path) as f, yaml_errors(path):
        data = _yaml_load(f.read()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a params file must be a mapping, got {type(data).__name__}")
    # error messages read "<file>: params.train: unknown key(s) ['lr_rate'] ..."
    return _resolve_bases(data, f"{path}: params", path.parent, (*chain, path))


def _normalise_override(item: str) -> str:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    with yaml_errors(f"--set {item}", in_file=False):
        return f"{key}={json.dumps(_yaml_load(raw))}"


def _resolve_bases(data: dict[str, Any], where: str, folder: Path,
                   chain: tuple[Path, ...]) -> dict[str, Any]:
    base = data.pop(BASE_KEY, None)
    # each file alone must fit the schema, so errors point at the file that holds the key
    from_dict(ExperimentConfig, data, where=where)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{where}: {BASE_KEY!r} must be a relative path, got {base!r}")
    merged = _load_file(folder / base, chain)
    return _merge(merged, data)


def _merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``delta``: mappings merge recursively, other values replace."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


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
    if t.batch_size < 1 or t.batch_per_device < 1 or t.batch_size % t.batch_per_device:
        raise ConfigError(f"train: batch_size={t.batch_size} must be a positive multiple of "
                          f"batch_per_device={t.batch_per_device}")
    if not all(0.0 < f <= 1.0 for f in t.eval_at):
        raise ConfigError(f"train.eval_at: fractions must lie in (0, 1], got {list(t.eval_at)}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device: {t.device!r} is not one of ['auto', 'cpu', 'cuda']")
    if t.epochs <= 0 and t.max_iters is None:
        raise ConfigError("train.epochs must be positive (or set train.max_iters)")
    if t.checkpoint_every < 1 or t.log_every < 1 or t.keep_checkpoints < 1:
        raise ConfigError("train.checkpoint_every, log_every and keep_checkpoints must be >= 1")


def save_experiment(cfg: ExperimentConfig, path: str | os.PathLike[str]) -> None:
    """Write the complete config (no ``base:``) as YAML, atomically; it loads back equal."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
