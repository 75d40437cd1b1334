"""Which checkpoint layout a file is in, with the evidence, so ``auto`` can say what it chose.

:func:`layouts.detect_layout` picks the *reader* (four key-name families). Benchmarking a
checkpoint needs one step more: which initialisation kind it is (an MAE encoder and a DeiT
classifier share the timm reader), and a clear refusal for layouts no converter reads
(detectron2's ViTDet). :func:`detect_layout` returns that finer layout and a one-line reason.
"""
from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .init import InitKind
from .layouts import CheckpointLayout, unwrap_state
from .layouts import detect_layout as detect_reader
from .report import CheckpointError


class Layout(str, enum.Enum):
    """Checkpoint layouts ``--add-init NAME=PATH:LAYOUT`` accepts (``auto`` detects one)."""

    MAE = "mae"  # timm names, no classifier: MAE pre-training ({"model"}; maybe decoder_*)
    TIMM = "timm"  # timm names with a classifier head: DeiT / timm supervised
    MOCOV3 = "mocov3"  # {"state_dict"} with module.base_encoder.
    BEIT = "beit"  # q_bias / v_bias, gamma_1, shared or per-block relative tables
    VITDET = "vitdet"  # ours: a detector (backbone.vit.) or a bare backbone (`convert` output)
    DETECTRON2 = "detectron2"  # detectron2 ViTDet (backbone.net.): recognised, not converted


AUTO = "auto"
# the init kind each convertible layout is benchmarked as (sets the positional defaults)
LAYOUT_KIND: dict[Layout, InitKind] = {
    Layout.MAE: InitKind.MAE,
    Layout.TIMM: InitKind.SUPERVISED,
    Layout.MOCOV3: InitKind.MOCOV3,
    Layout.BEIT: InitKind.BEIT,
    Layout.VITDET: InitKind.DETECTOR,
}
# why detectron2's ViTDet has no converter: its decomposed relative positions are
# query-dependent (q . R_h + q . R_w), which no static bias table of ours can express
DETECTRON2_UNSUPPORTED = (
    "detectron2 ViTDet checkpoints (backbone.net.*) are not converted: their decomposed, "
    "query-dependent rel_pos_h/rel_pos_w have no equivalent table here; benchmark the "
    "pre-trained encoder it started from (MAE/DeiT/...) instead")


def detect_layout(state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str]
                  ) -> tuple[Layout, str]:
    """The layout of a checkpoint (a loaded object, a bare state dict or a file path).

    Returns:
        ``(layout, reason)``: the reason names the keys that decided, e.g.
        ``"state_dict with module.base_encoder.* keys (MoCo v3)"``.
    Raises:
        CheckpointError: not a ViT checkpoint of any known layout (or the file is unreadable).
    """
    obj = state_dict_or_path
    where = ""
    if isinstance(obj, (str, os.PathLike)):
        from .load import read_checkpoint_file

        where = f"{obj}: "
        if not Path(obj).is_file():
            raise CheckpointError(f"{obj}: no such checkpoint file")
        obj = read_checkpoint_file(obj)
    try:
        state, wrapper = unwrap_state(obj)
        under = f"under {wrapper!r}" if wrapper else "bare"
        keys = [k.removeprefix("module.") for k in state]
        if any(k.startswith("backbone.net.") for k in keys):
            return Layout.DETECTRON2, f"{under}, backbone.net.* keys (detectron2 ViTDet)"
        reader = detect_reader(state)
    except CheckpointError as err:
        raise CheckpointError(f"{where}{err}") from None
    if reader == CheckpointLayout.MOCOV3:
        return Layout.MOCOV3, f"{under}, module.base_encoder.* keys (MoCo v3)"
    if reader == CheckpointLayout.BEIT:
        shared = "shared rel_pos_bias table" if any(k.startswith("rel_pos_bias.") for k in keys) \
            else "per-block relative tables" if any(
                k.endswith("relative_position_bias_table") for k in keys) else "no relative tables"
        return Layout.BEIT, f"{under}, attn.q_bias/v_bias keys, {shared} (BEiT)"
    if reader == CheckpointLayout.VITDET:
        what = "backbone.vit.* (our detector)" if any(k.startswith("backbone.vit.") for k in keys) \
            else "rel_pos_window/global tables, no class token (our backbone)"
        return Layout.VITDET, f"{under}, {what}"
    if any(k.startswith("head.") for k in keys):
        distilled = ", distilled" if "dist_token" in keys else ""
        return Layout.TIMM, (f"{under}, cls_token + head.* classifier{distilled} "
                             "(DeiT/timm supervised)")
    decoder = " + MAE decoder" if any(k.startswith("decoder_") for k in keys) else ""
    return Layout.MAE, f"{under}, cls_token + pos_embed, no classifier head{decoder} (MAE encoder)"


def parse_layout(value: str) -> Layout | None:
    """A ``LAYOUT`` string: a :class:`Layout` value, or None for ``auto``.

    Raises:
        ValueError: not a known layout (the message lists them).
    """
    if value == AUTO:
        return None
    try:
        return Layout(value)
    except ValueError:
        known = [AUTO, *(v.value for v in Layout)]
        raise ValueError(f"unknown checkpoint layout {value!r}; known: {known}") from None


def init_kind_of(layout: Layout) -> InitKind:
    """The init kind a layout is benchmarked as.

    Raises:
        CheckpointError: the layout has no converter (detectron2).
    """
    if layout not in LAYOUT_KIND:
        raise CheckpointError(DETECTRON2_UNSUPPORTED)
    return LAYOUT_KIND[layout]
