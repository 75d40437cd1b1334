"""Learning-rate schedule: half-period cosine decay to zero with a linear warmup.

The cosine spans the whole schedule (so the lr is exactly half the peak at mid-schedule and zero
at the end) and the warmup multiplies it by a ramp from ``warmup_factor`` to 1 over the first
``warmup_iters`` steps; the largest lr is therefore the one at the end of warmup.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def cosine_warmup_factor(it: int, *, total_iters: int, warmup_iters: int,
                         warmup_factor: float = 0.001) -> float:
    """The lr multiplier used for optimizer step ``it`` (0-based).

    Args:
        it: the number of optimizer steps already taken.
        total_iters: schedule length; the factor reaches 0 at ``it == total_iters``.
        warmup_iters: linear warmup length (0 disables warmup).
        warmup_factor: multiplier at ``it == 0`` relative to the cosine value.
    """
    it = min(max(it, 0), total_iters)
    cosine = 0.5 * (1.0 + math.cos(math.pi * it / max(total_iters, 1)))
    if it < warmup_iters:
        alpha = it / warmup_iters
        return cosine * (warmup_factor * (1.0 - alpha) + alpha)
    return cosine


def iterations_for_epochs(epochs: float, num_images: int, batch_size: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``num_images`` at ``batch_size`` per step.

    E.g. the paper's 100 epochs of COCO train2017 at batch 64: round(100 * 118287 / 64) = 184823.
    """
    return max(0, round(epochs * num_images / batch_size))


class WarmupCosineSchedule:
    """Sets each param group's lr to ``initial_lr * factor(iteration)``; step once per optimizer
    step.

    A LambdaLR-like object indexed by optimizer steps whose whole state is two integers and the
    base lrs, so a checkpoint restores it exactly. Groups may carry an ``lr_scale`` (e.g. for
    layer-wise lr decay) which multiplies their lr.

    Args:
        optimizer: its groups' current ``lr`` becomes ``initial_lr`` on construction.
        total_iters, warmup_iters, warmup_factor: see :func:`cosine_warmup_factor`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_iters: int, warmup_iters: int,
                 warmup_factor: float = 0.001) -> None:
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        self.optimizer = optimizer
        self.total_iters = total_iters
        self.warmup_iters = min(warmup_iters, total_iters)
        self.warmup_factor = warmup_factor
        self.last_iter = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def factor(self, it: int) -> float:
        return cosine_warmup_factor(it, total_iters=self.total_iters,
                                    warmup_iters=self.warmup_iters,
                                    warmup_factor=self.warmup_factor)

    def step(self) -> None:
        """Advance by one optimizer step and set the lr for the next one."""
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The lr of each group for the next optimizer step."""
        return [g["lr"] for g in self.optimizer.param_groups]

    def _apply(self) -> None:
        f = self.factor(self.last_iter)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * group.get("lr_scale", 1.0) * f

    def state_dict(self) -> dict[str, Any]:
        return {"total_iters": self.total_iters, "warmup_iters": self.warmup_iters,
                "warmup_factor": self.warmup_factor, "last_iter": self.last_iter}

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Restore the position; with ``strict`` the schedule's shape must match the one being
        resumed (a resume with an allowed change of length keeps the configured shape)."""
        shape = (state["total_iters"], state["warmup_iters"], state["warmup_factor"])
        if strict and shape != (self.total_iters, self.warmup_iters, self.warmup_factor):
            raise ValueError(f"checkpointed schedule (total, warmup, factor)={shape} differs "
                             "from the configured "
                             f"{(self.total_iters, self.warmup_iters, self.warmup_factor)}")
        self.last_iter = state["last_iter"]
        self._apply()
