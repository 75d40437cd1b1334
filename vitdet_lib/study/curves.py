"""Learning curves of the Table 1 runs: validation AP at each of a run's evaluations.

Figure 2 answers "how fast does each init converge" with separately trained schedules, as the
paper did; a single run's curve is not that (its learning rate has not annealed at the earlier
points), but it shows whether an init was still climbing steeply when its schedule ended, and
it costs only a few evaluations (``train.eval_at``). One row per init x size x schedule x
evaluation point, mean over the seeds that reached it.
"""
from __future__ import annotations

import statistics
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from .aggregate import INITS
from .cells import group_by, is_current, is_recipe, serving
from .plots import _no_run, _stamp

COLUMNS = ["size", "init", "schedule", "epoch", "APbox", "APbox sd", "AP50", "n", "runs"]


def learning_curves(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Validation APbox / AP50 against training epochs for every current Table 1 run."""
    recs = [r for r in serving(records, "T1") if is_recipe(r) and is_current(r)
            and r.get("eval_history")]
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
                         "APbox": statistics.mean(box),
                         "APbox sd": statistics.stdev(box) if len(box) > 1 else None,
                         "AP50": statistics.mean(ap50) if ap50 else None, "n": len(box),
                         "runs": ", ".join(sorted({r["run"] for r in group}))})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["size", "init", "epoch"], ignore_index=True) if rows else df


def curves_figure(curves: pd.DataFrame, note: str = "") -> Figure:
    """Validation APbox and AP50 against training epochs, one line per init (and size)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    if curves.empty:
        for ax, metric in zip(axes, ("APbox", "AP50")):
            _no_run(ax, f"Table 1 runs: validation {metric}")
        return _stamp(fig, note)
    sizes = sorted(set(curves["size"]))
    order = [i for i in INITS if i in set(curves["init"])]
    order += sorted(set(curves["init"]) - set(order))
    for ax, metric in zip(axes, ("APbox", "AP50")):
        for size in sizes:
            for init in order:
                d = curves[(curves["size"] == size) & (curves["init"] == init)]
                d = d.dropna(subset=[metric]).sort_values("epoch")
                if d.empty:
                    continue
                label = init if len(sizes) == 1 else f"{init} ({size})"
                yerr = d["APbox sd"].fillna(0.0) if metric == "APbox" else None
                ax.errorbar(d["epoch"], d[metric], yerr=yerr, marker="o", capsize=3, label=label)
        ax.set_title(f"Table 1 runs: validation {metric} during training")
        ax.set_xlabel("training epochs (one run each; mean over seeds)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    return _stamp(fig, note)

