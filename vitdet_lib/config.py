"""Typed configuration: model presets, a strict dict -> dataclass loader, and the one YAML
loader every params file goes through (``base:`` links and ``--set`` overrides).

Every experiment is data (``params/*.yaml``). Loading is strict: an unknown key is an error that
names the key and where it was found, so a typo never silently falls back to a default.

A params file may start from another one with ``base: relative/path.yaml`` and then state only
what differs; bases are merged recursively (mappings merge key by key, everything else is
replaced). Each file is checked on its own against the schema, so an unknown key is reported
with the file it came from and its full key path, e.g. ``params/x.yaml: params.train.lr_rate``.
"""
from __future__ import annotations

import copy
import dataclasses
import enum
import json
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitdet_lib.errors import InputError, yaml_errors


class ConfigError(InputError, ValueError):
    """A params file or override does not fit the configuration schema."""


# ImageNet statistics of images in [0, 1]: every official recipe normalises with them, and both
# pre-training and detection use them by default, so both see identically normalised pixels
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class AttentionLayout(str, enum.Enum):
    """Which blocks attend globally (docs/paper.md, Table 3)."""

    WINDOW = "window"  # every block windowed
    HYBRID = "hybrid"  # global at the last block of each quarter of the depth (the paper's default)
    GLOBAL = "global"  # every block global
    GLOBAL_CHECKPOINT = "global_checkpoint"  # every block global, activation checkpointing


class RelPos(str, enum.Enum):
    """Relative position biases in attention (docs/paper.md, Table 4)."""

    SHARED = "shared"  # one table for the windowed blocks, one for the global blocks
    NONE = "none"


@dataclass
class ViTConfig:
    """A plain ViT and its detection-time behaviour.

    Args:
        size: a named preset (``VIT_SIZES``: ``tiny/small/base/large/mini``); params files
            state it instead of repeating the shape, and keys given beside it win over it.
        patch_size: side of the square patches.
        embed_dim, depth, num_heads, mlp_ratio: the usual ViT shape.
        pretrain_img_size: image side used in pre-training; its token grid is the size of the
            stored absolute position embeddings and (by default) the attention window.
        window_size: side of the attention windows in tokens; 0 means pretrain grid.
        attention: which blocks attend globally.
        rel_pos: relative position biases (shared tables) or none.
        use_abs_pos: add absolute position embeddings to the patch embeddings.
        layer_scale_init: initial value of layer scale (BEiT); 0 disables layer scale.
        drop_path_rate: the last block's drop-path rate; rates increase linearly from 0.
        qkv_bias: bias in the qkv projection.
    """

    size: str | None = None
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    pretrain_img_size: int = 224
    window_size: int = 0
    attention: AttentionLayout = AttentionLayout.HYBRID
    rel_pos: RelPos = RelPos.SHARED
    use_abs_pos: bool = True
    layer_scale_init: float = 0.0
    drop_path_rate: float = 0.1
    qkv_bias: bool = True

    @property
    def pretrain_grid(self) -> int:
        return self.pretrain_img_size // self.patch_size

    @property
    def effective_window_size(self) -> int:
        return self.window_size or self.pretrain_grid

    @property
    def global_block_indexes(self) -> tuple[int, ...]:
        if self.attention == AttentionLayout.WINDOW:
            return ()
        if self.attention == AttentionLayout.HYBRID:
            return self.quarter_end_indexes
        return tuple(range(self.depth))

    @property
    def quarter_end_indexes(self) -> tuple[int, ...]:
        """The last block of each quarter of the depth: multi-scale taps and hybrid's global
        blocks."""
        if self.depth % 4:
            raise ConfigError(f"backbone depth={self.depth} (model.backbone.depth) must be a "
                              f"multiple of 4 (4 quarters)")
        q = self.depth // 4
        return tuple(q * (i + 1) - 1 for i in range(4))


@dataclass
class DetectorConfig:
    """The upgraded Mask R-CNN around the backbone.

    Args:
        num_classes: object classes, background excluded.
        image_size: the fixed square input side (train and test; the paper's 1024).
        multi_scale: the 4-level pyramid (True) or the single 1/16 map (docs/paper.md, Table 2).
        fpn_channels: width of the FPN outputs and heads.
        norm: normalisation in FPN and heads: "bn", "syncbn" (used automatically when
            distributed), or "none" (torchvision's original heads).
        anchor_sizes: one anchor size per pyramid level (scaled to the input size).
        min_size_test, detections_per_img, box_score_thresh: inference settings.
        pixel_mean, pixel_std: input normalisation (images are float in [0, 1]).
    """

    num_classes: int = 80
    image_size: int = 1024
    multi_scale: bool = True
    fpn_channels: int = 256
    norm: str = "bn"
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    detections_per_img: int = 100
    box_score_thresh: float = 0.05
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class ModelConfig:
    backbone: ViTConfig = field(default_factory=ViTConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)


# ViT sizes of the paper and the miniature study (docs/design.md, "The miniature study").
# Values are overrides of ViTConfig.
VIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "drop_path_rate": 0.1},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "drop_path_rate": 0.3},
    # miniature: 64x64 pre-training with patch 8 -> 8x8 grid -> window 8 at detection
    "mini": {"patch_size": 8, "embed_dim": 192, "depth": 8, "num_heads": 3,
             "pretrain_img_size": 64, "drop_path_rate": 0.1},
}


def sized_vit_params(params: dict[str, Any], where: str = "vit") -> dict[str, Any]:
    """ViT params with their named ``size`` expanded beneath the keys given beside it."""
    size = params.get("size")
    if size is None:
        return params
    if size not in VIT_SIZES:
        raise ConfigError(f"{where}.size: unknown ViT size {size!r}; choose one of "
                          f"{sorted(VIT_SIZES)}")
    return {**VIT_SIZES[size], **params}


def vit_config(size: str, **overrides: Any) -> ViTConfig:
    """A ViTConfig for a named size (``tiny/small/base/large/mini``) with overrides."""
    params = sized_vit_params({"size": size, **overrides}, where="vit")
    return from_dict(ViTConfig, params, where=f"vit size {size!r}")


# ----------------------------------------------------------------------------- strict loading


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a (nested) dict, refusing unknown keys.

    Enums are built from their values, tuples from lists, nested dataclasses recursively.
    ``where`` names the source (file and section) in error messages.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = [m.value for m in tp]
            raise ConfigError(f"{where}: {value!r} is not one of {choices}") from None
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r} (e.g. [{value!r}])")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON-friendly data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


# ----------------------------------------------------------------------------- params files

BASE_KEY = "base"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; params files mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """YAML as params files mean it (``1e-4`` is a float)."""
    return yaml.load(text, Loader=_Loader)


# (one file's or the overrides' data, where it came from) -> None; raises ConfigError
FileCheck = Callable[[dict[str, Any], str], None]


def load_params(source: str | os.PathLike[str] | dict[str, Any], schema: type,
                overrides: list[str] | tuple[str, ...] = (), check: FileCheck | None = None
                ) -> dict[str, Any]:
    """A params file (following ``base:`` links) or dict, merged, then ``a.b=value`` overrides.

    Args:
        source: path of a YAML file, or the params as a dict (a ``base:`` in a dict is
            resolved relative to the working directory).
        schema: the dataclass each file and the overrides must fit on their own.
        overrides: ``a.b=value`` strings applied last (values parsed as YAML).
        check: further checks of each file and of the overrides (e.g. moved keys).
    Returns:
        The merged data, not yet built into ``schema`` (the caller adds cross-field checks).
    Raises:
        ConfigError: unknown key (naming the file and key path), wrong type, a missing file, or
            a cycle of bases.
    """
    if isinstance(source, dict):
        data = _resolve_bases(copy.deepcopy(source), "params dict: params", Path.cwd(), (),
                              schema, check)
    else:
        data = _load_file(Path(source), (), schema, check)
    if overrides:
        # re-spelled as JSON (valid YAML) so "train.lr=3e-4" means a float here as in files
        overrides = [_normalise_override(item) for item in overrides]
        # checked on their own first so the error names the override, not the merged whole
        delta = apply_overrides({}, list(overrides))
        if check is not None:
            check(delta, "--set overrides: params")
        from_dict(schema, delta, where="--set overrides: params")
        apply_overrides(data, list(overrides))
    return data


def _load_file(path: Path, chain: tuple[Path, ...], schema: type, check: FileCheck | None
               ) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"cycle of base: links: {cycle}")
    if not path.is_file():
        hint = f" (base of {chain[-1]})" if chain else ""
        raise ConfigError(f"params file {path} not found{hint}")
    with open(path) as f, yaml_errors(path):
        data = yaml_load(f.read()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a params file must be a mapping, got {type(data).__name__}")
    # error messages read "<file>: params.train: unknown key(s) ['lr_rate'] ..."
    return _resolve_bases(data, f"{path}: params", path.parent, (*chain, path), schema, check)


def _normalise_override(item: str) -> str:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    with yaml_errors(f"--set {item}", in_file=False):
        return f"{key}={json.dumps(yaml_load(raw))}"


def _resolve_bases(data: dict[str, Any], where: str, folder: Path, chain: tuple[Path, ...],
                   schema: type, check: FileCheck | None) -> dict[str, Any]:
    base = data.pop(BASE_KEY, None)
    if check is not None:
        check(data, where)
    # each file alone must fit the schema, so errors point at the file that holds the key
    from_dict(schema, data, where=where)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{where}: {BASE_KEY!r} must be a relative path, got {base!r}")
    return merge_params(_load_file(folder / base, chain, schema, check), data)


def merge_params(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``delta``: mappings merge recursively, other values replace."""
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_params(out[key], value)
        else:
            out[key] = value
    return out
