"""AdamW with the paper's weight-decay exemptions.

Weight decay pulls parameters towards zero; that is a prior on weights, not on offsets, scales or
position tables. So norms' weights, biases and layer-scale gammas (every parameter with at most
one dimension), absolute position embeddings, relative-position bias tables and the learned
class and mask tokens ([1, 1, C] offsets in embedding space) get no decay. One builder serves
fine-tuning and pre-training.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# substrings of parameter names that never get weight decay whatever their shape
NO_DECAY_NAME_PARTS: tuple[str, ...] = ("pos_embed", "rel_pos")
# last components of parameter names that never get weight decay
NO_DECAY_TOKENS: tuple[str, ...] = ("cls_token", "mask_token")


def skips_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Whether parameter ``name`` is exempt from weight decay (see module docstring)."""
    return (param.ndim <= 1 or any(part in name for part in NO_DECAY_NAME_PARTS)
            or name.rsplit(".", 1)[-1] in NO_DECAY_TOKENS)


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]],
                 weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and an exempt group.

    Returns:
        Up to two AdamW groups ``{"params", "param_names", "weight_decay", "group"}``; empty
        groups are left out and frozen parameters (``requires_grad=False``) are skipped.
        ``param_names`` rides along in the optimizer's state dict, which makes a checkpoint
        readable and lets tests check which names were exempted.
    """
    decay: dict[str, list] = {"params": [], "param_names": []}
    no_decay: dict[str, list] = {"params": [], "param_names": []}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        target = no_decay if skips_weight_decay(name, param) else decay
        target["params"].append(param)
        target["param_names"].append(name)
    groups = [dict(decay, weight_decay=weight_decay, group="decay"),
              dict(no_decay, weight_decay=0.0, group="no_decay")]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters with :func:`param_groups`.

    Pass the bare model, not a DistributedDataParallel wrapper, so names carry no ``module.``.
    """
    groups = param_groups(model.named_parameters(), weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
