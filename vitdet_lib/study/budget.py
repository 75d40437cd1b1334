"""A profile's pre-training budget: the one stated rule that sets every method's epochs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vitdet_lib.config import ConfigError

if TYPE_CHECKING:
    from .profile import StudyProfile


@dataclass
class PretrainBudget:
    """The one rule that sets every method's pre-training length (``vitdet_lib.pretrain.budget``).

    A pre-training run opts in with ``parameters: {budget: true}``; its ``train.epochs`` is then
    the rule's (runs that study the length itself, e.g. Figure 3's, set their own).

    Args:
        rule: ``equal_compute`` (each method the same device time, from its measured
            throughput), ``paper_proportional`` (the paper's epoch ratios, scaled to the
            budget), or ``equal_epochs`` (the same ``epochs`` for all: only for pipeline checks).
        total_seconds: device time of all the methods' pre-trainings together.
        num_images: images per pre-training epoch.
        images_per_s: measured training throughput per method (``measured`` says how).
        epochs: the ``equal_epochs`` length.
        measured: the command, device and date of the throughput measurement.
    """

    rule: str = ""
    total_seconds: float = 0.0
    num_images: int = 0
    images_per_s: dict[str, float] = field(default_factory=dict)
    epochs: float = 0.0
    measured: str = ""


def budget_epochs(profile: StudyProfile, method: str) -> float:
    """``method``'s pre-training epochs under the profile's budget rule."""
    from vitdet_lib.pretrain.budget import split_budget

    b = profile.pretrain_budget
    if not b.rule:
        raise ConfigError(f"profile {profile.name}: a pre-training run asks for `budget` but "
                          "the profile has no pretrain_budget")
    if b.rule == "equal_epochs":
        if b.epochs <= 0:
            raise ConfigError(f"profile {profile.name}: pretrain_budget.epochs must be > 0")
        return float(b.epochs)
    shares = split_budget(b.images_per_s, b.total_seconds, b.num_images, b.rule)
    found = {m.value: share for m, share in shares.items()}
    if method not in found:
        raise ConfigError(f"profile {profile.name}: pretrain_budget.images_per_s has no "
                          f"{method!r} (has {sorted(found)})")
    return round(found[method].epochs, 3)
