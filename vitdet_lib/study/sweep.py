"""The tuning protocol (docs/paper.md, "Tuning protocol"): an lr x wd grid at drop path 0,
widened while the best value lies on the grid's border, then drop path at the best (lr, wd).
Every choice is made on the validation split (``bbox/AP``), never on the test split."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from .profile import Run, StudyProfile, SweepConfig, make_run

SELECTION_METRIC = "bbox/AP"  # validation-split APbox: what every selection maximises


def _widen_axis(values: Sequence[float], best: float, factor: float) -> list[float]:
    """``values`` plus one step beyond the border the best value sits on.

    An axis with a single value is a fixed choice, not a range, and is never widened.
    """
    values = sorted(values)
    if len(values) < 2:
        return list(values)
    if best == values[0]:
        values = [values[0] / factor, *values]
    elif best == values[-1]:
        values = [*values, values[-1] * factor]
    return values


def best_point(ap: Mapping[tuple[float, ...], float | None]) -> tuple[float, ...] | None:
    """The key of the highest finite AP; None when no point has one. Ties: smaller values."""
    finite = {k: v for k, v in ap.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    return max(finite, key=lambda k: (finite[k], *(-x for x in k)))


def widen_grid(ap: Mapping[tuple[float, float], float | None], lrs: Sequence[float],
               wds: Sequence[float], factor: float = 2.0
               ) -> tuple[list[float], list[float]] | None:
    """The next grid when the best (lr, wd) is on the border of ``lrs`` x ``wds``, else None.

    Args:
        ap: AP of each evaluated (lr, wd); missing or NaN points (failed runs) are ignored.
        lrs, wds: the grid's values on each axis.
        factor: step between neighbouring values (the protocol halves and doubles: 2).
    Returns:
        ``(lrs, wds)`` extended by one value beyond each border that holds the best point, or
        None when the best point is interior on every widenable axis (or nothing finished).
    """
    best = best_point({k: v for k, v in ap.items() if k[0] in lrs and k[1] in wds})
    if best is None:
        return None
    new_lrs = _widen_axis(lrs, best[0], factor)
    new_wds = _widen_axis(wds, best[1], factor)
    if new_lrs == sorted(lrs) and new_wds == sorted(wds):
        return None
    return new_lrs, new_wds


# ----------------------------------------------------------------------------- sweep runs


def sweep_grid_run(profile: StudyProfile, sweep: SweepConfig, init: str, lr: float, wd: float
                   ) -> Run:
    params = {**sweep.parameters, "lr": lr, "weight_decay": wd, "drop_path": 0.0,
              "stage": "grid", "sweep": sweep.name}
    return make_run(profile, f"{sweep.name}-{init}-lr{lr:.3g}-wd{wd:.3g}", "finetune", params,
                    init=init, size=sweep.size, serves=("HP",), stage=sweep.stage)


def sweep_dp_run(profile: StudyProfile, sweep: SweepConfig, init: str, lr: float, wd: float,
                 dp: float) -> Run:
    params = {**sweep.parameters, "lr": lr, "weight_decay": wd, "drop_path": dp,
              "stage": "drop_path", "sweep": sweep.name}
    if sweep.drop_path_epochs is not None:
        params["epochs"] = sweep.drop_path_epochs
    params["overrides"] = [*(params.get("overrides") or []), *sweep.drop_path_overrides]
    return make_run(profile, f"{sweep.name}-{init}-dp{dp:g}", "finetune", params, init=init,
                    size=sweep.size, serves=("HP",), stage=sweep.stage)


def dp_reuses_grid(sweep: SweepConfig) -> bool:
    """The grid ran at drop path 0: when the drop-path stage would repeat that run exactly
    (same schedule, no extra overrides), its result is reused instead of trained again."""
    return (0 in sweep.drop_path and not sweep.drop_path_overrides
            and sweep.drop_path_epochs in (None, sweep.parameters.get("epochs")))


def walk_sweep(profile: StudyProfile, sweep: SweepConfig, init: str,
               execute: Callable[[Run], float | None], echo: Callable[[str], None] = print
               ) -> tuple[float, float, float] | None:
    """Run (or, with a replaying ``execute``, retrace) one init's sweep.

    Args:
        execute: runs one sweep run (or reads its record) and returns its validation APbox
            (None when it did not succeed).
    Returns:
        The winner ``(lr, weight_decay, drop_path)``, or None when no run succeeded.
    """
    lrs, wds = sorted(sweep.lr), sorted(sweep.weight_decay)
    ap: dict[tuple[float, float], float | None] = {}
    for widening in range(sweep.max_widenings + 1):
        for lr in lrs:
            for wd in wds:
                if (lr, wd) not in ap:
                    ap[(lr, wd)] = execute(sweep_grid_run(profile, sweep, init, lr, wd))
        wider = widen_grid(ap, lrs, wds, sweep.factor)
        if wider is None:
            break
        if widening == sweep.max_widenings:
            echo(f"{sweep.name}-{init}: best on the border, but max_widenings="
                 f"{sweep.max_widenings} reached")
            break
        lrs, wds = wider
        echo(f"{sweep.name}-{init}: best on the border, widening to lr {lrs} x wd {wds}")
    best = best_point(ap)
    if best is None:
        echo(f"{sweep.name}-{init}: no grid run succeeded; drop-path stage skipped")
        return None
    lr, wd = best
    if not sweep.drop_path:
        return lr, wd, 0.0
    same_run = dp_reuses_grid(sweep)
    dp_ap = {(dp,): ap[best] if dp == 0 and same_run
             else execute(sweep_dp_run(profile, sweep, init, lr, wd, dp))
             for dp in sweep.drop_path}
    dp_best = best_point(dp_ap)
    return None if dp_best is None else (lr, wd, dp_best[0])
