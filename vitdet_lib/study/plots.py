"""The paper's figures (seaborn) from ``aggregate``'s data frames; saved as PNG and SVG."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # headless: matplotlib falls back to Agg by itself
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from vitdet_lib.io import atomic_write

from .aggregate import INITS, NO_RUN, TIDE_ERRORS


def _no_run(ax: plt.Axes, title: str) -> None:
    ax.text(0.5, 0.5, NO_RUN, ha="center", va="center", fontsize=14, color="grey",
            transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def _stamp(fig: Figure, note: str) -> Figure:
    if note:
        import textwrap

        text = "\n".join(textwrap.wrap(note, 150))
        fig.text(0.5, 0.005, text, ha="center", va="bottom", fontsize=7, color="firebrick")
    fig.tight_layout(rect=(0, 0.09 if note else 0, 1, 1))
    return fig


def save_figure(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p in paths:
        atomic_write(p, lambda f, fmt=p.suffix[1:]: fig.savefig(f, dpi=120, format=fmt))
    return paths


def _errorbars(ax: plt.Axes, data: pd.DataFrame, x: str, hue: str, order: list[str]) -> None:
    """Mean APbox with ± sd bars, one line per ``hue`` value."""
    for name in order:
        d = data[data[hue] == name].sort_values(x)
        ax.errorbar(d[x], d["APbox"], yerr=d["APbox sd"].fillna(0.0), marker="o", capsize=3,
                    label=str(name))
    ax.legend(fontsize=8)


def _missing_note(ax: plt.Axes, data: pd.DataFrame, label: str) -> None:
    """List the points without a current result (failed / stale / no run) under the axes."""
    bad = data[data["state"] != "ok"]
    if not bad.empty:
        text = "; ".join(f"{r[label]} @ {r['schedule']:g}: {r['state']}" for _, r in bad.iterrows()
                         if r["schedule"] == r["schedule"])
        ax.text(0.0, -0.28, "not plotted: " + text[:160], transform=ax.transAxes, fontsize=7,
                color="firebrick", va="top")


def figure2(ours: pd.DataFrame, paper: pd.DataFrame, sizes: list[str], note: str = "") -> Figure:
    """AP vs fine-tuning epochs per init, each point a separately trained schedule (mean ± sd
    over seeds): one panel per size of ours, one of the paper's."""
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(4.8 * (len(sizes) + 1), 4.2),
                             squeeze=False)
    for ax, size in zip(axes[0], sizes):
        data = ours[ours["size"] == size] if not ours.empty else ours
        plotted = data.dropna(subset=["APbox"]) if not data.empty else data
        if plotted.empty:
            _no_run(ax, f"ours, {size}")
            continue
        order = [i for i in INITS if i in set(plotted["init"])]
        order += sorted(set(plotted["init"]) - set(order))
        _errorbars(ax, plotted, "epoch", "init", order)
        split = ", ".join(sorted(set(plotted["split"])))
        ax.set_title(f"ours, ViT size {size} ({split} APbox)")
        ax.set_xlabel("fine-tuning epochs (separate schedules)")
        ax.set_ylabel("APbox")
        _missing_note(ax, data, "init")
    ax = axes[0][-1]
    if paper.empty:
        _no_run(ax, "paper")
    else:
        sns.lineplot(data=paper, x="epoch", y="AP", hue="series", marker="s", ax=ax)
        ax.set_title("paper: MAE ViT-B (lower confidence)")
        ax.set_xlabel("fine-tuning epochs")
    return _stamp(fig, note)


def figure3(ours: pd.DataFrame, note: str = "") -> Figure:
    """APbox vs MAE pre-training epochs (ours: separate pre-training runs, one line per
    fine-tuning schedule), with the paper's ViT-L points."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    plotted = ours.dropna(subset=["APbox"]) if not ours.empty else ours
    if plotted.empty:
        _no_run(axes[0], "ours")
    else:
        plotted = plotted.assign(line=[f"{s} ft {e:g} ep" for s, e in
                                       zip(plotted["size"], plotted["schedule"])])
        _errorbars(axes[0], plotted, "pretrain epochs", "line", sorted(set(plotted["line"])))
        axes[0].set_title("ours: separate MAE pre-trainings")
        axes[0].set_xlabel("pre-training epochs")
        axes[0].set_ylabel("APbox")
        _missing_note(axes[0], ours.rename(columns={"pretrain epochs": "pt"}), "pt")
    axes[1].plot([800, 1600], [53.1, 53.3], "s-", color="black")
    axes[1].set_title("paper: MAE ViT-L (text)")
    axes[1].set_xlabel("pre-training epochs")
    axes[1].set_ylabel("APbox")
    return _stamp(fig, note)


def figure4(tide: pd.DataFrame, note: str = "") -> Figure:
    """TIDE dAP per error type, one bar per init."""
    long = tide.melt(id_vars="init", value_vars=list(TIDE_ERRORS), var_name="error",
                     value_name="dAP")
    long["dAP"] = pd.to_numeric(long["dAP"], errors="coerce")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    if long["dAP"].notna().sum() == 0:
        _no_run(ax, "TIDE errors (dAP at IoU 0.5)")
    else:
        sns.barplot(data=long.dropna(), x="error", y="dAP", hue="init", ax=ax)
        ax.set_title("TIDE errors, boxes, IoU 0.5 (paper: no numbers in its text)")
    return _stamp(fig, note)


def tuning_figure(grid: pd.DataFrame, dp: pd.DataFrame, note: str = "") -> Figure:
    """Heatmap of APbox over lr x wd for each init, then APbox against drop path."""
    inits = list(dict.fromkeys(grid["init"])) if not grid.empty else []
    fig, axes = plt.subplots(1, max(len(inits), 1) + 1, figsize=(4.5 * (len(inits) + 1), 3.8),
                             squeeze=False)
    if not inits:
        _no_run(axes[0][0], "lr x wd")
    for ax, init in zip(axes[0], inits):
        data = grid[grid["init"] == init].pivot_table(index="weight_decay", columns="lr",
                                                      values="val APbox", aggfunc="max")
        if data.empty or data.isna().all().all():  # a partial study: this init's sweep not run
            _no_run(ax, f"{init}: lr x wd")
            continue
        sns.heatmap(data, annot=True, fmt=".2f", cmap="viridis", ax=ax, cbar=False)
        ax.set_title(f"{init}: val APbox, lr x wd (dp 0)")
    ax = axes[0][-1]
    if dp.empty or dp["val APbox"].notna().sum() == 0:
        _no_run(ax, "drop path")
    else:
        sns.barplot(data=dp, x="drop_path", y="val APbox", hue="init", ax=ax)
        ax.set_title("val APbox vs drop path at the best lr, wd")
    return _stamp(fig, note)


def curves_figure(curves: pd.DataFrame, note: str = "") -> Figure:
    """Validation APbox and AP50 against training epochs, one line per init and schedule
    (and size)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    if curves.empty:
        for ax, metric in zip(axes, ("APbox", "AP50")):
            _no_run(ax, f"learning curves: validation {metric}")
        return _stamp(fig, note)
    sizes = sorted(set(curves["size"]))
    order = [i for i in INITS if i in set(curves["init"])]
    order += sorted(set(curves["init"]) - set(order))
    for ax, metric in zip(axes, ("APbox", "AP50")):
        for size in sizes:
            for init in order:
                mine = curves[(curves["size"] == size) & (curves["init"] == init)]
                schedules = sorted(set(mine["schedule"]))
                for schedule in schedules:
                    d = mine[mine["schedule"] == schedule].dropna(subset=[metric])
                    if d.empty:
                        continue
                    label = init if len(sizes) == 1 else f"{init} ({size})"
                    if len(schedules) > 1:
                        label += f", {d['epoch'].max():g} ep run"
                    yerr = d["APbox sd"].fillna(0.0) if metric == "APbox" else None
                    ax.errorbar(d["epoch"], d[metric], yerr=yerr, marker="o", capsize=3,
                                label=label)
        ax.set_title(f"validation {metric} during training")
        ax.set_xlabel("training epochs (one run each; mean over seeds)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    return _stamp(fig, note)
