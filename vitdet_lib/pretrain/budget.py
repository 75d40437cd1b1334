"""Pre-training budgets: one stated rule turns measured costs into each method's epochs.

The four recipes cost very different amounts per epoch (MoCo v3 runs two views through two
encoders, MAE's encoder sees a quarter of the patches), so "the same epochs" is not "the same
compute", and the paper's epochs (below) were each recipe's own published schedule, not a
budget chosen to be comparable. A study states one rule and applies it to every method:

- ``equal_compute`` (the miniature study's rule): every method gets the same share of the
  total device time; its epochs follow from its own measured throughput. It answers "which
  initialisation is best for a fixed pre-training cost".
- ``paper_proportional``: epochs in the paper's ratios (MAE 1600 : BEiT 800 : MoCo v3 300 :
  supervised 300), scaled so that all methods together use the total budget. It answers "the
  paper's comparison, shrunk", expensive methods then take more of the budget.

Costs are throughputs of the real training step (``benchmarks/pretrain_throughput.py``
measures them for one encoder config in one run). One-time work before pre-training (BEiT's
tokenizer) is not charged, as the paper's BEiT did not charge DALL-E's tokenizer either.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import ConfigError
from .config import Method


@dataclass(frozen=True)
class PaperSchedule:
    """A pre-training length as published, with where it comes from."""

    epochs: int
    source: str


# ImageNet-1k epochs of the checkpoints the benchmarking paper fine-tunes (ViT-B where the
# recipes differ by size).
PAPER_EPOCHS: dict[Method, PaperSchedule] = {
    Method.MAE: PaperSchedule(1600, "MAE (He et al. 2021): the 1600-epoch checkpoints the "
                                    "benchmarking paper uses (its Fig. 3 also 100-800)"),
    Method.BEIT: PaperSchedule(800, "BEiT (Bao et al. 2021): 800 epochs, as the benchmarking "
                                    "paper lists its BEiT initialisation"),
    Method.MOCOV3: PaperSchedule(300, "MoCo v3 (Chen, Xie, He 2021): ViT-B 300 epochs"),
    Method.SUPERVISED: PaperSchedule(300, "DeiT (Touvron et al. 2021): ViT-B 300 epochs"),
}


class BudgetRule(str, enum.Enum):
    """How a total pre-training budget is divided (module docstring)."""

    EQUAL_COMPUTE = "equal_compute"
    PAPER_PROPORTIONAL = "paper_proportional"


@dataclass(frozen=True)
class BudgetShare:
    """One method's part of the budget.

    Attributes:
        epochs: passes over ``num_images`` (fractional; round as the schedule needs).
        seconds: device time it takes at the measured throughput.
        images_per_s: the measured throughput it was computed from.
    """

    epochs: float
    seconds: float
    images_per_s: float


def images_per_second(step_seconds: float, batch_size: int) -> float:
    """Throughput from a measured optimizer-step time (``batch_size`` images per step)."""
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be positive, got {step_seconds}")
    return batch_size / step_seconds


def split_budget(images_per_s: Mapping[Method | str, float], total_seconds: float,
                 num_images: int, rule: BudgetRule | str = BudgetRule.EQUAL_COMPUTE
                 ) -> dict[Method, BudgetShare]:
    """Each method's epochs when the methods together may use ``total_seconds``.

    Args:
        images_per_s: measured training throughput of each method (same device, same encoder).
        total_seconds: device time for all the methods' pre-trainings together.
        num_images: images per epoch (the pre-training set's size).
        rule: ``equal_compute``: ``epochs_m = (T / M) * ips_m / N``; ``paper_proportional``:
            ``epochs_m = k * paper_m`` with ``k = T / sum_m(paper_m * N / ips_m)``.

    Returns:
        ``{method: BudgetShare}``; the shares' seconds sum to ``total_seconds``.

    Raises:
        ConfigError: an unknown method or rule, or a non-positive throughput, budget or size.
    """
    try:
        rule = BudgetRule(rule)
    except ValueError:
        raise ConfigError(f"budget rule {rule!r} is not one of "
                          f"{[r.value for r in BudgetRule]}") from None
    if total_seconds <= 0 or num_images <= 0 or not images_per_s:
        raise ConfigError("split_budget needs total_seconds > 0, num_images > 0 and at least "
                          "one method's throughput")
    ips: dict[Method, float] = {}
    for name, value in images_per_s.items():
        try:
            method = Method(name)
        except ValueError:
            raise ConfigError(f"unknown method {name!r}; one of "
                              f"{[m.value for m in Method]}") from None
        if not value > 0:
            raise ConfigError(f"{method.value}: images_per_s must be positive, got {value}")
        ips[method] = float(value)
    if rule == BudgetRule.EQUAL_COMPUTE:
        seconds = {m: total_seconds / len(ips) for m in ips}
    else:
        # seconds of one "paper unit": every method's paper epochs at its own throughput
        unit = sum(PAPER_EPOCHS[m].epochs * num_images / ips[m] for m in ips)
        scale = total_seconds / unit
        seconds = {m: scale * PAPER_EPOCHS[m].epochs * num_images / ips[m] for m in ips}
    return {m: BudgetShare(epochs=seconds[m] * ips[m] / num_images, seconds=seconds[m],
                           images_per_s=ips[m]) for m in ips}
