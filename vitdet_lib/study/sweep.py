"""The tuning protocol's grid (docs/paper.md, "Tuning protocol"): lr x wd, widened while the best
value lies on the grid's border, then drop path at the best (lr, wd)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


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


def best_point(ap: Mapping[tuple[float, float], float]) -> tuple[float, float] | None:
    """The (lr, wd) of the highest finite AP; None when no point has one."""
    finite = {k: v for k, v in ap.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    return max(finite, key=lambda k: (finite[k], -k[0], -k[1]))  # ties: the smaller values


def widen_grid(ap: Mapping[tuple[float, float], float], lrs: Sequence[float],
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
