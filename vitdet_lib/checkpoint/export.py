"""Weights-only, half-precision copies of checkpoints, small enough to ship in a repository.

A pre-training checkpoint carries what fine-tuning never reads (MAE's decoder, BEiT's
tokenizer head, MoCo v3's momentum encoder and predictor, optimizer state). The export keeps
the keys the backbone loader uses, in the file's own layout (so ``init.kind`` is unchanged),
as fp16; readers upcast on load (``layouts.read_state``). A detector export keeps its
``model`` weights only. Both check themselves: the exported file must read back as the same
layout with the same backbone keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..io import torch_save_atomic
from .layouts import CheckpointLayout, detect_layout, read_state, unwrap_state
from .read import read_checkpoint_file
from .report import CheckpointError

# kept although the loader drops them: the layout detector tells timm files by their class token
_LAYOUT_MARKERS = ("cls_token",)


def _half(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16) if t.is_floating_point() else t


def backbone_weights(obj: Any) -> tuple[dict[str, torch.Tensor], str, CheckpointLayout]:
    """The keys of a loaded checkpoint that the backbone loader uses, its wrapper, its layout."""
    state, wrapper = unwrap_state(obj)
    layout = detect_layout(state)
    src = read_state(state, layout)
    keep = {k: v for k, v in state.items()
            if k not in src.dropped or k.rsplit(".", 1)[-1] in _LAYOUT_MARKERS}
    return keep, wrapper, layout


def export_backbone(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the backbone weights of checkpoint ``src`` as fp16 to ``dst``; what was kept.

    Raises:
        CheckpointError: ``src`` is not a ViT checkpoint, or the export does not read back as
            the same layout with the same loaded keys.
    """
    keep, wrapper, layout = backbone_weights(read_checkpoint_file(src))
    half = {k: _half(v) for k, v in keep.items()}
    again, _, layout_again = backbone_weights({wrapper: half} if wrapper else half)
    if layout_again != layout or set(again) != set(keep):
        raise CheckpointError(f"{src}: the fp16 export would read back differently "
                              f"({layout.value} -> {layout_again.value}); not written")
    path = torch_save_atomic({wrapper: half} if wrapper else half, dst)
    return {"path": str(dst), "layout": layout.value, "keys": len(half),
            "bytes": Path(path).stat().st_size}


def export_detector(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict[str, Any]:
    """Write a fine-tuned detector's ``model`` weights (no optimizer state) as fp16 to ``dst``."""
    obj = read_checkpoint_file(src)
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, dict) or not model:
        raise CheckpointError(f"{src}: no 'model' weights; is it a fine-tuning checkpoint?")
    out = {"model": {k: _half(v) for k, v in model.items()}}
    if "config" in obj:
        out["config"] = obj["config"]
    path = torch_save_atomic(out, dst)
    return {"path": str(dst), "keys": len(model), "bytes": Path(path).stat().st_size}
