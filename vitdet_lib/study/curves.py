"""Learning curves: validation AP at each evaluation of the Table 1 / Figure 2 runs that
evaluate along the way (``train.eval_at`` with more than one point).

Figure 2 answers "how fast does each init converge" with separately trained schedules, as the
paper did; a single run's curve is not that (its learning rate has not annealed at the earlier
points), but it shows whether an init was still climbing steeply when its schedule ended, and
it costs only a few evaluations (``train.eval_at``). One row per init x size x schedule x
evaluation point, mean over the seeds that reached it. The figure is ``plots.curves_figure``.
"""
from __future__ import annotations

import statistics
from math import nan as NAN
from typing import Any

import pandas as pd

from .cells import group_by, is_current, recipe_runs

COLUMNS = ["size", "init", "schedule", "epoch", "APbox", "APbox sd", "AP50", "n", "runs"]


def learning_curves(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Validation APbox / AP50 against training epochs for every current Table 1 / Figure 2
    recipe run with more than one evaluation."""
    recs = [r for r in recipe_runs(records)
            if is_current(r) and len(r.get("eval_history") or []) > 1]
    rows = []
    for (size, init, schedule), group in group_by(recs, "size", "init", "schedule").items():
        points: dict[float, list[dict[str, Any]]] = {}
        for r in group:
            for h in r["eval_history"]:
                if h.get("bbox/AP") is not None and h.get("epoch") is not None:
                    points.setdefault(round(float(h["epoch"]), 3), []).append(h)
        for epoch, hs in sorted(points.items()):
            box = [float(h["bbox/AP"]) for h in hs]
            ap50 = [float(h["bbox/AP50"]) for h in hs if h.get("bbox/AP50") is not None]
            rows.append({"size": size, "init": init, "schedule": schedule, "epoch": epoch,
                         "APbox": round(statistics.mean(box), 2),
                         "APbox sd": round(statistics.stdev(box), 2) if len(box) > 1 else NAN,
                         "AP50": round(statistics.mean(ap50), 2) if ap50 else NAN,
                         "n": len(box),
                         "runs": ", ".join(sorted({r["run"] for r in group}))})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["size", "init", "epoch"], ignore_index=True) if rows else df
