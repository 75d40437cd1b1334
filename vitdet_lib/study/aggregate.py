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

from . import paper
from .records import SUCCESS, finite, load_records
from .render import NO_RUN, paper_table, save_table, to_markdown, write_index
from .tasks.tide import TIDE_ERRORS

__all__ = ["INITS", "NO_RUN", "TIDE_ERRORS", "convergence", "mae_epochs", "paper_convergence",
           "paper_table", "save_table", "study_records", "table1", "table2", "table3", "table4",
           "table5", "tide_table", "to_markdown", "tuning", "write_index"]

INITS = ("random", "supervised", "mocov3", "beit", "mae")
LAYOUTS = ("window", "hybrid", "global_checkpoint", "global")
SELECT = "bbox/AP"  # validation split
TEST = "test/"  # prefix of the test split's metrics


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


def _state(r: dict[str, Any]) -> str:
    return r.get("state") or r.get("status") or NO_RUN


def _ok(r: dict[str, Any]) -> bool:
    return _state(r) == SUCCESS


def serving(records: Iterable[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    """Records of runs that feed ``table`` (all states)."""
    return [r for r in records if table in (r.get("serves") or [])]


def _p(r: dict[str, Any], key: str) -> Any:
    return (r.get("parameters") or {}).get(key)


def _overrides(r: dict[str, Any]) -> list[str]:
    return list(_p(r, "overrides") or [])


def _is_sweep(r: dict[str, Any]) -> bool:
    return _p(r, "stage") in ("grid", "drop_path")


def _is_recipe(r: dict[str, Any]) -> bool:
    """A run of its init's recipe (Table 1 / Figure 2 rows): no ablation overrides, no sweep."""
    return not _overrides(r) and not _is_sweep(r)


def _schedule(r: dict[str, Any]) -> float | None:
    """The schedule as the profile lists it (random init trains ``schedule_factor`` x it)."""
    return finite(_p(r, "schedule_epochs"))


def fmt(value: Any, digits: int = 1) -> str:
    v = finite(value)
    if v is None:
        return NO_RUN if value is None else str(value)
    return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2g}"


def _ep(value: Any) -> str:
    v = finite(value)
    return NO_RUN if v is None else f"{v:g}"


def _values(recs: list[dict[str, Any]], metric: str) -> list[float]:
    return [v for r in recs if _ok(r) and (v := finite((r.get("metrics") or {}).get(metric)))
            is not None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _others(recs: list[dict[str, Any]]) -> str:
    """``"2 failed, 1 stale"`` for the runs of a cell that did not give a number."""
    counts: dict[str, int] = {}
    for r in recs:
        if not _ok(r):
            counts[_state(r)] = counts.get(_state(r), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def cell(recs: list[dict[str, Any]], metric: str, digits: int = 1) -> str:
    """``mean ± sd (n=k)`` of ``metric`` over the cell's current runs (one run: the value),
    with the states of the runs that gave none; the state alone when none did."""
    values = _values(recs, metric)
    others = _others(recs)
    if not values:
        return others or ("no metric" if recs else NO_RUN)
    text = fmt(values[0], digits) if len(values) == 1 else (
        f"{fmt(statistics.mean(values), digits)} ± {fmt(statistics.stdev(values), digits)} "
        f"(n={len(values)})")
    return f"{text} [{others}]" if others else text


def report_metric(recs: list[dict[str, Any]], metric: str) -> str:
    """The test split's ``metric`` when the runs have it, else the validation one (and the
    caller's table says so)."""
    return TEST + metric if _values(recs, TEST + metric) else metric


def _paper(table: str, row: str, col: str) -> str:
    n = paper.lookup(table, row, col)
    return n.label if n else ""


def _sizes(records: list[dict[str, Any]], sizes: Iterable[str] | None) -> list[str]:
    found = [s for s in dict.fromkeys(_p(r, "size") for r in records) if s]
    return list(sizes) if sizes else found


def _split_note(df: pd.DataFrame, used_val: bool) -> pd.DataFrame:
    df.attrs["protocol_note"] = (
        "Selection (schedule, lr, wd, drop path) on the validation scenes; reported numbers "
        "on the held-out test scenes, mean ± sd over seeds (n = seeds with a current result)."
        + (" Some cells have no test split and show VALIDATION numbers (marked `val`)."
           if used_val else ""))
    return df


# ----------------------------------------------------------------------------- T1 / F2


def _by(recs: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault(tuple(_schedule(r) if k == "schedule" else _p(r, k) for k in keys),
                          []).append(r)
    return groups


def best_schedule(recs: list[dict[str, Any]]) -> tuple[float | None, list[dict[str, Any]]]:
    """The schedule whose runs have the best mean validation APbox, and those runs."""
    groups = _by(recs, "schedule")
    scored = {k[0]: _mean(_values(g, SELECT)) for k, g in groups.items()}
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
    recs = [r for r in serving(records, "T1") if _is_recipe(r)]
    rows, used_val = [], False
    for init in inits:
        for size in _sizes(recs, sizes):
            mine = [r for r in recs if _p(r, "init") == init and _p(r, "size") == size]
            schedule, chosen = best_schedule(mine)
            box, mask = report_metric(chosen, "bbox/AP"), report_metric(chosen, "segm/AP")
            used_val |= bool(_values(chosen, box)) and not box.startswith(TEST)
            ok = [r for r in chosen if _ok(r)]
            first = ok[0]["metrics"] if ok else {}
            split = "test" if box.startswith(TEST) else ("val" if ok else "")
            rows.append({
                "init": init, "size": size, "APbox": cell(chosen, box),
                "APmask": cell(chosen, mask), "split": split or NO_RUN,
                "val APbox": cell(chosen, SELECT),
                "schedule (ep)": _ep(schedule),
                "trained ep": _ep(_p(chosen[0], "epochs")) if chosen else NO_RUN,
                "schedules tried": ", ".join(_ep(k[0]) for k in sorted(
                    _by(mine, "schedule"), key=lambda k: k[0] or 0.0)) or NO_RUN,
                "lr": fmt(first.get("lr"), 6) if ok else NO_RUN,
                "wd": fmt(first.get("weight_decay"), 3) if ok else NO_RUN,
                "dp": fmt(first.get("drop_path"), 2) if ok else NO_RUN,
                "tuned by": _p(chosen[0], "tuned_by") if chosen else NO_RUN,
                "paper ViT-B APbox": _paper("T1", init, "B APbox"),
                "paper ViT-L APbox": _paper("T1", init, "L APbox")})
    return _split_note(pd.DataFrame(rows), used_val)


def convergence(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Figure 2's data: one row per separately trained schedule (init x size x schedule),
    test APbox mean ± sd over seeds; random init's schedules are ``schedule_factor`` longer."""
    recs = [r for r in serving(records, "F2") if _is_recipe(r)]
    rows = []
    for (size, init, schedule), group in _by(recs, "size", "init", "schedule").items():
        box = report_metric(group, "bbox/AP")
        values = _values(group, box)
        rows.append({"size": size, "init": init, "schedule": schedule,
                     "epoch": finite(_p(group[0], "epochs")),
                     "APbox": _mean(values),
                     "APbox sd": statistics.stdev(values) if len(values) > 1 else None,
                     "n": len(values), "split": "test" if box.startswith(TEST) else "val",
                     "state": _others(group) or "ok"})
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
    recs = [r for r in serving(records, "F3") if _is_recipe(r) and _p(r, "init_kind") == "mae"
            and _p(r, "pretrain_epochs") is not None]
    rows = []
    for (size, epochs, schedule), group in _by(recs, "size", "pretrain_epochs",
                                               "schedule").items():
        box = report_metric(group, "bbox/AP")
        values = _values(group, box)
        rows.append({"size": size, "pretrain epochs": float(epochs), "schedule": schedule,
                     "APbox": _mean(values),
                     "APbox sd": statistics.stdev(values) if len(values) > 1 else None,
                     "n": len(values), "split": "test" if box.startswith(TEST) else "val",
                     "state": _others(group) or "ok",
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
    single-scale run; the multi-scale rows are the same init's recipe runs."""
    recs = [r for r in serving(records, "T2") if not _is_sweep(r)]
    single = [r for r in recs if "model.detector.multi_scale=false" in _overrides(r)]
    keys = list(_by(single, "size", "init", "schedule")) or [(None, None, None)]
    rows = []
    for size, init, schedule in keys:
        same = [r for r in recs if (_p(r, "size"), _p(r, "init"), _schedule(r))
                == (size, init, schedule)]
        multi = [r for r in same if _is_recipe(r)]
        one = [r for r in same if r in single]
        for name, group in (("multi-scale (FPN)", multi), ("single-scale", one)):
            rows.append({"size": size or NO_RUN, "init": init or NO_RUN,
                         "schedule": _ep(schedule), "backbone": name, **_speed_cols(group),
                         "paper APbox": _paper("T2", name, "APbox")})
    df = pd.DataFrame(rows)
    df.attrs["paper_note"] = _paper("T2", "multi-scale (FPN)", "cost")
    return df


def table3(records: list[dict[str, Any]], layouts: Iterable[str] = LAYOUTS) -> pd.DataFrame:
    """Table 3: attention strategies: AP (the fine-tune runs the measurement names), training
    memory (the step's own peak, and the total with weights, gradients and optimizer state),
    speed."""
    measured = [r for r in serving(records, "T3") if "layouts" in (r.get("metrics") or {})]
    ok = [r for r in measured if _ok(r)]
    by_layout = {row["layout"]: row for r in ok for row in r["metrics"]["layouts"]}
    state = _state(measured[0]) if measured and not ok else NO_RUN
    rows = []
    for layout in layouts:
        m = by_layout.get(layout)
        if m is None:
            rows.append({"layout": layout, "APbox": state, "train step peak MB": state,
                         "train total MB": state, "train s/iter": state, "infer s/img": state})
        else:
            key = "test/bbox/AP" if m.get("test/bbox/AP") is not None else "bbox/AP"
            ap = (f"{fmt(m[key])} (n={m.get(key + ' n', 1)}, "
                  f"{'test' if key.startswith(TEST) else 'val'})" if m.get(key) is not None
                  else ", ".join(m.get("ap_status") or []) or NO_RUN)
            rows.append({"layout": layout, "APbox": ap,
                         "train step peak MB": m.get("error") or fmt(m.get("train_peak_mem_mb"),
                                                                     0),
                         "train total MB": m.get("error") or fmt(m.get("train_total_mem_mb"), 0),
                         "train s/iter": fmt(m.get("train_s_per_iter"), 3),
                         "infer s/img": fmt(m.get("infer_s_per_img"), 3)})
        rows[-1]["paper APbox (ViT-L)"] = _paper("T3", layout, "APbox")
    return pd.DataFrame(rows)


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
    recs = [r for r in serving(records, "T4") if not _is_sweep(r)
            and not any("attention" in o or "multi_scale" in o for o in _overrides(r))]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in recs:
        m = r.get("metrics") or {}
        key = (_p(r, "init"), _p(r, "init_kind"), _p(r, "pretrained_pos") or "",
               m.get("rel_pos_init") or "?", m.get("abs_pos_init") or "?", _schedule(r))
        groups.setdefault(key, []).append(r)
    rows = []
    for (init, kind, pt, rel, abs_, schedule), group in sorted(
            groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        box = report_metric(group, "bbox/AP")
        rows.append({"paper row": T4_ROWS.get((kind, pt, rel, abs_), ""), "init": init,
                     "pre-trained with": pt or "?", "rel-pos": rel, "abs-pos": abs_,
                     "schedule": _ep(schedule), "APbox": cell(group, box),
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
        for row in (r.get("metrics") or {}).get("tide", []) if _ok(r) else []:
            if row.get("init"):
                found[row["init"]] = row
    missing = _state(runs[0]) if runs and not any(_ok(r) for r in runs) else NO_RUN
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
        for m in (r.get("metrics") or {}).get("models", []) if _ok(r) else []:
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
        rows.append({"model": _state(runs[0]) if runs else NO_RUN})
    df = pd.DataFrame(rows)
    df.attrs["paper_note"] = "; ".join(f"{n.row} {n.col}: {n.label} [{n.source}]"
                                       for n in paper.numbers("T5"))
    return df


def tuning(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tuning protocol: (lr x wd grid runs, drop-path runs) with their validation APbox."""
    grid, dp = [], []
    for r in serving(records, "HP"):
        ap = finite((r.get("metrics") or {}).get(SELECT)) if _ok(r) else None
        row = {"sweep": _p(r, "sweep"), "init": _p(r, "init"), "lr": _p(r, "lr"),
               "weight_decay": _p(r, "weight_decay"), "drop_path": _p(r, "drop_path"),
               "epochs": _p(r, "epochs"), "val APbox": None if ap is None else round(ap, 3),
               "state": _state(r)}
        (grid if _p(r, "stage") == "grid" else dp).append(row)
    cols = ["sweep", "init", "lr", "weight_decay", "drop_path", "epochs", "val APbox", "state"]
    return pd.DataFrame(grid, columns=cols), pd.DataFrame(dp, columns=cols)
