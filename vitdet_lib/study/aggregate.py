"""Records -> the paper's tables (pandas), measured as the paper measured them.

The protocol (docs/paper.md, "Tuning protocol"): every selection (lr / wd / drop path in the
sweeps, the schedule of Table 1) is made on the validation split (``bbox/AP``); every reported
number is the test split's (``test/bbox/AP``), as mean ± sd over seeds. Records come in through
:func:`study_records`, which keeps only the current profile's runs and marks each with its
``state``: ``success`` (current), ``stale``, ``failed``, ``skipped`` or ``no run``. Only current
successes enter a number; a cell without one shows why.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from vitdet_lib.tide import TIDE_ERRORS

from . import paper
from .cells import (
    SELECT,
    TEST,
    by_schedule,
    cell,
    f3_runs,
    fmt,
    fmt_epochs,
    group_by,
    is_current,
    is_recipe,
    is_sweep,
    mean,
    other_states,
    overrides_of,
    param,
    recipe_runs,
    report_metric,
    schedule_of,
    serving,
    state_of,
    values_of,
)
from .records import finite, load_records
from .render import NO_RUN, paper_table, save_table, to_markdown, write_index

__all__ = ["INITS", "NO_RUN", "TIDE_ERRORS", "convergence", "mae_epochs", "paper_convergence",
           "paper_table", "save_table", "study_records", "table1", "table2", "table3", "table4",
           "table5", "tide_table", "to_markdown", "tuning", "write_index"]

INITS = ("random", "supervised", "mocov3", "beit", "mae")
LAYOUTS = ("window", "hybrid", "global_checkpoint", "global")


# ----------------------------------------------------------------------------- records


def study_records(profile: Any, results_dir: str | Path | None = None
                  ) -> tuple[list[dict[str, Any]], int]:
    """The profile's runs, each a record with ``state`` (and ``state_reason``); runs without a
    record are stubs with their expected parameters. Returns ``(records, ignored)`` where
    ``ignored`` counts records under ``runs/`` that are not runs of the profile."""
    from .runner import study_state

    root = Path(results_dir or profile.results_dir)
    states = study_state(profile, root)
    found = {r["run"]: r for r in load_records(root)}
    out = []
    for name, o in states.items():
        r = dict(found.get(name) or {"run": name, "status": NO_RUN, "metrics": {},
                                     "parameters": o.parameters,
                                     "serves": (o.parameters or {}).get("serves", [])})
        r["state"], r["state_reason"] = o.status, o.message
        out.append(r)
    return out, len(set(found) - set(states))


def _paper(table: str, row: str, col: str) -> str:
    n = paper.lookup(table, row, col)
    return n.label if n else ""


def _sizes(records: list[dict[str, Any]], sizes: Iterable[str] | None) -> list[str]:
    found = [s for s in dict.fromkeys(param(r, "size") for r in records) if s]
    return list(sizes) if sizes else found


def _split_note(df: pd.DataFrame, used_val: bool) -> pd.DataFrame:
    df.attrs["protocol_note"] = (
        "Selection (schedule, lr, wd, drop path) on the validation scenes; reported numbers "
        "on the held-out test scenes, mean ± sd over seeds (n = seeds with a current result)."
        + (" Some cells have no test split and show VALIDATION numbers (marked `val`)."
           if used_val else ""))
    return df


# ----------------------------------------------------------------------------- T1 / F2


def best_schedule(recs: list[dict[str, Any]]) -> tuple[float | None, list[dict[str, Any]]]:
    """The schedule whose runs have the best mean validation APbox, and those runs."""
    groups = group_by(recs, "schedule")
    scored = {k[0]: mean(values_of(g, SELECT)) for k, g in groups.items()}
    valid = {k: v for k, v in scored.items() if v is not None and math.isfinite(v)}
    if not valid:
        key = max(groups, key=lambda k: k[0] or 0.0) if groups else (None,)
        return key[0], groups.get(key, [])
    best = max(valid, key=lambda k: (valid[k], -(k or 0.0)))  # ties: the shorter schedule
    return best, groups[(best,)]


def table1(records: list[dict[str, Any]], sizes: Iterable[str] | None = None,
           inits: Iterable[str] = INITS) -> pd.DataFrame:
    """Table 1: each init with its tuned lr / wd / drop path at its best schedule (chosen on
    validation APbox), reported on the test split as mean ± sd over seeds."""
    recs = [r for r in serving(records, "T1") if is_recipe(r)]
    figure2_only = [r for r in serving(records, "F2") if is_recipe(r) and r not in recs]
    rows, used_val = [], False
    for init in inits:
        for size in _sizes(recs, sizes):
            mine = [r for r in recs if param(r, "init") == init and param(r, "size") == size]
            schedule, chosen = best_schedule(mine)
            box, mask = report_metric(chosen, "bbox/AP"), report_metric(chosen, "segm/AP")
            used_val |= bool(values_of(chosen, box)) and not box.startswith(TEST)
            ok = [r for r in chosen if is_current(r)]
            first = ok[0]["metrics"] if ok else {}
            split = "test" if box.startswith(TEST) else ("val" if ok else "")
            rows.append({
                "init": init, "size": size, "APbox": cell(chosen, box),
                "APmask": cell(chosen, mask), "split": split or NO_RUN,
                "val APbox": cell(chosen, SELECT),
                "schedule (ep)": fmt_epochs(schedule),
                "trained ep": fmt_epochs(param(chosen[0], "epochs")) if chosen else NO_RUN,
                "schedules tried": ", ".join(fmt_epochs(k[0]) for k in sorted(
                    group_by(mine, "schedule"), key=lambda k: k[0] or 0.0)) or NO_RUN,
                "Figure 2's other schedules (val APbox)": _other_schedules(
                    [r for r in figure2_only if param(r, "init") == init
                     and param(r, "size") == size]),
                "lr": fmt(first.get("lr"), 6) if ok else NO_RUN,
                "wd": fmt(first.get("weight_decay"), 3) if ok else NO_RUN,
                "dp": fmt(first.get("drop_path"), 2) if ok else NO_RUN,
                "tuned by": param(chosen[0], "tuned_by") if chosen else NO_RUN,
                "paper ViT-B APbox": _paper("T1", init, "B APbox"),
                "paper ViT-L APbox": _paper("T1", init, "L APbox")})
    return _split_note(pd.DataFrame(rows), used_val)


def _other_schedules(recs: list[dict[str, Any]]) -> str:
    """``epochs trained: val APbox`` of an init's Figure 2 runs that Table 1 does not choose
    among, so a reader sees what a longer or shorter schedule reached beside the chosen one."""
    cells = [f"{fmt_epochs(param(g[0], 'epochs'))} ep: {cell(g, SELECT)}"
             for g in by_schedule(recs).values()]
    return "; ".join(cells) or NO_RUN


def _split(box: str, values: list[float]) -> str:
    """The split a data row's numbers come from; empty for a row without numbers."""
    return ("test" if box.startswith(TEST) else "val") if values else ""


def convergence(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Figure 2's data: one row per separately trained schedule (init x size x schedule),
    test APbox mean ± sd over seeds; random init's schedules are ``schedule_factor`` longer."""
    recs = [r for r in serving(records, "F2") if is_recipe(r)]
    rows = []
    for (size, init, schedule), group in group_by(recs, "size", "init", "schedule").items():
        box = report_metric(group, "bbox/AP")
        values = values_of(group, box)
        rows.append({"size": size, "init": init, "schedule": schedule,
                     "epoch": finite(param(group[0], "epochs")),
                     "APbox": mean(values),
                     "APbox sd": statistics.stdev(values) if len(values) > 1 else None,
                     "n": len(values), "split": _split(box, values),
                     "state": other_states(group) or "ok"})
    cols = ["size", "init", "schedule", "epoch", "APbox", "APbox sd", "n", "split", "state"]
    return pd.DataFrame(rows, columns=cols).sort_values(["size", "init", "epoch"],
                                                         ignore_index=True)


def paper_convergence() -> pd.DataFrame:
    rows = [{"series": n.row, "epoch": float(n.col), "AP": n.value, "source": n.source,
             "confidence": n.confidence} for n in paper.numbers("F2")]
    return pd.DataFrame(rows)


def mae_epochs(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Figure 3's data: test APbox against MAE pre-training epochs, one row per separately
    pre-trained checkpoint and fine-tuning schedule."""
    recs = f3_runs(records)
    rows = []
    for (size, epochs, schedule), group in group_by(recs, "size", "pretrain_epochs",
                                               "schedule").items():
        box = report_metric(group, "bbox/AP")
        values = values_of(group, box)
        rows.append({"size": size, "pretrain epochs": float(epochs), "schedule": schedule,
                     "APbox": mean(values),
                     "APbox sd": statistics.stdev(values) if len(values) > 1 else None,
                     "n": len(values), "split": _split(box, values),
                     "state": other_states(group) or "ok",
                     "runs": ", ".join(r["run"] for r in group)})
    cols = ["size", "pretrain epochs", "schedule", "APbox", "APbox sd", "n", "split", "state",
            "runs"]
    return pd.DataFrame(rows, columns=cols).sort_values(["size", "schedule", "pretrain epochs"],
                                                         ignore_index=True)


# ----------------------------------------------------------------------------- T2 / T3 / T4


def _speed_cols(recs: list[dict[str, Any]]) -> dict[str, str]:
    box = report_metric(recs, "bbox/AP")
    return {"APbox": cell(recs, box), "APmask": cell(recs, report_metric(recs, "segm/AP")),
            "split": "test" if box.startswith(TEST) else "val",
            "train s/iter": cell(recs, "train_s_per_iter", 3),
            "infer s/img": cell(recs, "infer_s_per_img", 3),
            "train step mem MB": cell(recs, "step_mem_mb", 0),
            "peak mem MB (CUDA alloc. / CPU RSS)": cell(recs, "max_mem_mb", 0)}


def table2(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Table 2: multi-scale (FPN) vs single-scale, per (size, init, schedule) with a
    single-scale run; the multi-scale rows are the same init's recipe runs at that schedule
    (whichever table they were trained for)."""
    single = [r for r in serving(records, "T2") if not is_sweep(r)
              and "model.detector.multi_scale=false" in overrides_of(r)]
    keys = list(group_by(single, "size", "init", "schedule")) or [(None, None, None)]
    recipes = recipe_runs(records, ("T1", "F2", "T2"))

    def key_of(r: dict[str, Any]) -> tuple[Any, ...]:
        return param(r, "size"), param(r, "init"), schedule_of(r)

    rows = []
    for size, init, schedule in keys:
        multi = [r for r in recipes if key_of(r) == (size, init, schedule)]
        one = [r for r in single if key_of(r) == (size, init, schedule)]
        for name, group in (("multi-scale (FPN)", multi), ("single-scale", one)):
            rows.append({"size": size or NO_RUN, "init": init or NO_RUN,
                         "schedule": fmt_epochs(schedule), "backbone": name, **_speed_cols(group),
                         "paper APbox": _paper("T2", name, "APbox")})
    df = pd.DataFrame(rows)
    df.attrs["paper_note"] = _paper("T2", "multi-scale (FPN)", "cost")
    return df


def table3(records: list[dict[str, Any]], layouts: Iterable[str] = LAYOUTS) -> pd.DataFrame:
    """Table 3: attention strategies: AP (the fine-tune runs the measurement names), training
    memory (the step's own peak, and the total with weights, gradients and optimizer state),
    speed."""
    # a profile may measure more than once (e.g. AP of fine-tunes at two schedules): one block
    # of rows per measurement, named in the first column
    measured = [r for r in serving(records, "T3") if is_memory_time(r)]
    rows = []
    for r in measured or [None]:
        rows += _table3_rows(r, layouts)
    return pd.DataFrame(rows)


def is_memory_time(r: dict[str, Any]) -> bool:
    """A Table 3 measurement run (memory and time per layout), not a fine-tune."""
    return "layouts" in (r.get("metrics") or {}) or param(r, "layouts") is not None


def _table3_rows(r: dict[str, Any] | None, layouts: Iterable[str]) -> list[dict[str, Any]]:
    ok = r is not None and is_current(r)
    by_layout = {row["layout"]: row for row in r["metrics"]["layouts"]} if ok else {}
    state = state_of(r) if r is not None and not ok else NO_RUN
    rows = []
    for layout in layouts:
        m = by_layout.get(layout)
        rows.append({"measurement": r["run"] if r is not None else NO_RUN})
        if m is None:
            rows[-1].update({"layout": layout, "APbox": state, "train step peak MB": state,
                             "train total MB": state, "train s/iter": state,
                             "infer s/img": state})
        else:
            key = "test/bbox/AP" if m.get("test/bbox/AP") is not None else "bbox/AP"
            ap = (f"{fmt(m[key])} (n={m.get(key + ' n', 1)}, "
                  f"{'test' if key.startswith(TEST) else 'val'})" if m.get(key) is not None
                  else ", ".join(m.get("ap_status") or []) or NO_RUN)
            err = m.get("error")
            rows[-1].update({"layout": layout, "APbox": ap,
                             "train step peak MB": err or fmt(m.get("train_peak_mem_mb"), 0),
                             "train total MB": err or fmt(m.get("train_total_mem_mb"), 0),
                             "train s/iter": fmt(m.get("train_s_per_iter"), 3),
                             "infer s/img": fmt(m.get("infer_s_per_img"), 3)})
        rows[-1]["paper APbox (ViT-L)"] = _paper("T3", layout, "APbox")
    return rows


# the paper's Table 4 rows: (init kind, pre-trained with, fine-tune rel-pos, fine-tune abs-pos)
T4_ROWS = {("beit", "rel", "pretrained", "random"): "1 (BEiT default)",
           ("beit", "rel", "zero", "random"): "2",
           ("beit", "abs", "zero", "pretrained"): "3 (BEiT pre-trained with abs)",
           ("mae", "abs", "zero", "pretrained"): "4 (MAE default)",
           ("mae", "abs", "none", "pretrained"): "5"}


def table4(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Table 4: positional information, one row per (init, pre-training positions, fine-tuning
    rel-pos treatment, abs-pos treatment, schedule), test APbox mean ± sd over seeds; the
    paper's row number where the row is one of the paper's five."""
    # the paper's Table 4 compares BEiT and MAE initialisations only
    recs = [r for r in serving(records, "T4") if not is_sweep(r)
            and param(r, "init_kind") in ("beit", "mae")
            and not any("attention" in o or "multi_scale" in o for o in overrides_of(r))]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in recs:
        m = r.get("metrics") or {}
        key = (param(r, "init"), param(r, "init_kind"), param(r, "pretrained_pos") or "",
               m.get("rel_pos_init") or "?", m.get("abs_pos_init") or "?", schedule_of(r))
        groups.setdefault(key, []).append(r)
    rows = []
    for (init, kind, pt, rel, abs_, schedule), group in sorted(
            groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        box = report_metric(group, "bbox/AP")
        rows.append({"paper row": T4_ROWS.get((kind, pt, rel, abs_), ""), "init": init,
                     "pre-trained with": pt or "?", "rel-pos": rel, "abs-pos": abs_,
                     "schedule": fmt_epochs(schedule), "APbox": cell(group, box),
                     "split": "test" if box.startswith(TEST) else "val",
                     "train s/iter": cell(group, "train_s_per_iter", 3),
                     "train step mem MB": cell(group, "step_mem_mb", 0)})
    df = pd.DataFrame(rows, columns=["paper row", "init", "pre-trained with", "rel-pos",
                                     "abs-pos", "schedule", "APbox", "split", "train s/iter",
                                     "train step mem MB"])
    df.attrs["paper_note"] = "; ".join(f"{n.row}: {n.label}" for n in paper.numbers("T4"))
    return df


# ----------------------------------------------------------------------------- F4 / T5 / HP


def tide_table(records: list[dict[str, Any]], inits: Iterable[str] = INITS) -> pd.DataFrame:
    """Figure 4's data: TIDE dAP (IoU 0.5, boxes) per init and error type."""
    found: dict[str, dict[str, Any]] = {}
    runs = serving(records, "F4")
    for r in runs:
        for row in (r.get("metrics") or {}).get("tide", []) if is_current(r) else []:
            if row.get("init"):
                found[row["init"]] = row
    missing = state_of(runs[0]) if runs and not any(is_current(r) for r in runs) else NO_RUN
    rows = []
    for init in inits:
        row = found.get(init)
        cells = {e: (fmt(row.get(e), 2) if row and e in row else
                     (row.get("error", missing) if row else missing)) for e in TIDE_ERRORS}
        rows.append({"init": init, **cells})
    return pd.DataFrame(rows)


def table5(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Table 5: parameters, FLOPs in both conventions, activations, speed."""
    rows = []
    for r in serving(records, "T5"):
        for m in (r.get("metrics") or {}).get("models", []) if is_current(r) else []:
            p = m.get("params", {})
            name = m["model"]
            paper_name = "ResNet-101" if name.startswith("ResNet") else name
            rows.append({"model": name, "input": m["image_size"],
                         "params M": fmt(p.get("total", 0) / 1e6, 2),
                         "backbone GFLOPs (torch, MAC=2)": fmt(m.get("backbone_gflops"), 3),
                         "detector GMACs (paper, MAC=1)": fmt(m.get("detector_gmacs"), 3),
                         "backbone activations M": fmt(m.get("backbone_activations_m"), 2),
                         "train peak mem MB": fmt(m.get("train_peak_mem_mb"), 0),
                         "fps": fmt(m.get("fps"), 1),
                         "paper APbox (random init)": _paper("T5", paper_name,
                                                             "APbox (random init)")})
    if not rows:
        runs = serving(records, "T5")
        rows.append({"model": state_of(runs[0]) if runs else NO_RUN})
    df = pd.DataFrame(rows)
    df.attrs["paper_note"] = "; ".join(f"{n.row} {n.col}: {n.label} [{n.source}]"
                                       for n in paper.numbers("T5"))
    return df


def tuning(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tuning protocol: (lr x wd grid runs, drop-path runs) with their validation APbox."""
    grid, dp = [], []
    for r in serving(records, "HP"):
        ap = finite((r.get("metrics") or {}).get(SELECT)) if is_current(r) else None
        row = {"sweep": param(r, "sweep"), "init": param(r, "init"), "lr": param(r, "lr"),
               "weight_decay": param(r, "weight_decay"), "drop_path": param(r, "drop_path"),
               "epochs": param(r, "epochs"), "val APbox": None if ap is None else round(ap, 3),
               "state": state_of(r)}
        (grid if param(r, "stage") == "grid" else dp).append(row)
    # a drop-path stage at the grid's schedule reuses the grid's run at its (lr, wd) as dp 0
    for first in [next(d for d in dp if (d["sweep"], d["init"]) == k)
                  for k in dict.fromkeys((d["sweep"], d["init"]) for d in dp)]:
        same = lambda g, f=first: all(g[k] == f[k] for k in
                                      ("sweep", "init", "lr", "weight_decay", "epochs"))
        if not any(same(d) and d["drop_path"] == 0 for d in dp):
            dp.extend({**g, "state": "grid run (reused)"} for g in grid if same(g))
    cols = ["sweep", "init", "lr", "weight_decay", "drop_path", "epochs", "val APbox", "state"]
    return pd.DataFrame(grid, columns=cols), pd.DataFrame(dp, columns=cols)
