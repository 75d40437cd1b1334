"""Walkthrough figures of the detector's data and output: LSJ samples and predictions."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ._draw import draw_instances, new_axes

# ----------------------------------------------------------------------------- 6. LSJ

def lsj_sample(dataset: Any, index: int, image_size: int, scale: float, seed: int = 0
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One sample of ``dataset`` (a CocoDetection without transform) through LSJ at a fixed
    ``scale`` (the library's ``lsj_transform`` with a one-point scale range, no flip)."""
    from torchvision import tv_tensors

    from ..data import lsj_transform

    image, target = dataset.load_image(index), dataset.load_target(index)
    target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                               canvas_size=tuple(image.shape[-2:]))
    target["masks"] = tv_tensors.Mask(target["masks"])
    torch.manual_seed(seed)  # the crop position
    out, tgt = lsj_transform(image_size, scale_range=(scale, scale), flip_prob=0.0)(
        tv_tensors.Image(image), target)
    plain = {k: v.as_subclass(torch.Tensor) if torch.is_tensor(v) else v for k, v in tgt.items()}
    return out.as_subclass(torch.Tensor), plain


def plot_lsj(dataset: Any, index: int, scale: float, seed: int, image_size: int) -> Figure:
    """The original scene, LSJ at ``scale``, and three draws from the paper's range [0.1, 2.0]."""
    names = dataset.class_names
    fig, ax = new_axes(5, size=2.9)
    ax = ax[0]
    t = dataset.load_target(index)
    draw_instances(ax[0], dataset.load_image(index), t["masks"], t["boxes"],
                    [names[i] for i in t["labels"]])
    ax[0].set_title(f"original {tuple(dataset.load_image(index).shape[-2:])}", fontsize=9)
    rng = np.random.default_rng(seed)
    scales = [scale, *np.exp(rng.uniform(np.log(0.1), np.log(2.0), 3))]
    for a, s, k in zip(ax[1:], scales, range(4)):
        img, tgt = lsj_sample(dataset, index, image_size, float(s), seed + k)
        draw_instances(a, img, tgt["masks"], tgt["boxes"], [names[i] for i in tgt["labels"]])
        a.set_title(("chosen" if k == 0 else "random") + f" scale {s:.2f}: "
                    f"{len(tgt['labels'])} objects", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- 8. predictions


def load_detector(checkpoint: str | Path) -> tuple[nn.Module, Any]:
    """A trained detector and its experiment config from a training checkpoint (``last.pth``);
    every key must fit (missing/unexpected keys are an error, both listed)."""
    from ..config import from_dict
    from ..engine.checkpoint import load_checkpoint, model_state_from
    from ..experiment import ExperimentConfig
    from ..model import build_detector

    state = load_checkpoint(checkpoint)
    cfg = from_dict(ExperimentConfig, state["config"], where=f"{checkpoint}: config")
    model = build_detector(cfg.model)
    res = model.load_state_dict(model_state_from(state), strict=False)
    if res.missing_keys or res.unexpected_keys:
        raise RuntimeError(f"{checkpoint}: missing {res.missing_keys}, "
                           f"unexpected {res.unexpected_keys}")
    return model.eval(), cfg


def plot_predictions(images: Sequence[torch.Tensor], outputs: Sequence[dict[str, torch.Tensor]],
                     targets: Sequence[dict[str, torch.Tensor]], class_names: Sequence[str],
                     index: int = 0, score_thresh: float = 0.3) -> Figure:
    """Ground truth and the detections scoring at least ``score_thresh`` (masks at 0.5)."""
    fig, ax = new_axes(2, size=4.0)
    img, out, tgt = images[index], outputs[index], targets[index]
    draw_instances(ax[0, 0], img, tgt["masks"], tgt["boxes"],
                    [class_names[i] for i in tgt["labels"]])
    ax[0, 0].set_title(f"ground truth: {len(tgt['labels'])} objects", fontsize=9)
    keep = out["scores"] >= score_thresh
    draw_instances(ax[0, 1], img, out["masks"][keep, 0] > 0.5, out["boxes"][keep],
                    [f"{class_names[l]} {s:.2f}"
                     for l, s in zip(out["labels"][keep], out["scores"][keep])])
    ax[0, 1].set_title(
        f"{int(keep.sum())} of {len(keep)} detections with score >= {score_thresh:.3g}", fontsize=9)
    return fig
