"""Records -> the paper's tables (pandas), with the paper's numbers beside ours.

Every builder takes the records (``records.load_records``) and what the profile expected, so a
cell without a result says ``no run`` (or ``failed`` / ``skipped`` when the run's record says
so). Tables are saved as Markdown and CSV by :func:`save_table`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from . import paper
from .records import SUCCESS, finite

NO_RUN = "no run"
INITS = ("random", "supervised", "mocov3", "beit", "mae")
LAYOUTS = ("window", "hybrid", "global_checkpoint", "global")
REL = ("pretrained", "zero", "random", "none")
ABS = ("pretrained", "random", "none")
TIDE_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")


def fmt(value: Any, digits: int = 1) -> str:
    v = finite(value)
    if v is None:
        return NO_RUN if value is None else str(value)
    return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2g}"


def serving(records: Iterable[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    """Records of runs that feed ``table`` (all statuses)."""
    return [r for r in records if table in (r.get("serves") or [])]


def _cell(recs: list[dict[str, Any]], metric: str, digits: int = 1) -> str:
    """The metric of the first successful record, else the status of a failed one."""
    ok = [r for r in recs if r.get("status") == SUCCESS]
    if ok:
        return fmt(ok[0].get("metrics", {}).get(metric), digits)
    return recs[0]["status"] if recs else NO_RUN


def _p(r: dict[str, Any], key: str) -> Any:
    return (r.get("parameters") or {}).get(key)


def _overrides(r: dict[str, Any]) -> list[str]:
    return list(_p(r, "overrides") or [])


def _is_default(r: dict[str, Any]) -> bool:
    """A run of the default recipe (T1's rows): no ablation overrides, not a sweep."""
    return not _overrides(r) and _p(r, "stage") is None and r["run"].startswith("ft-")


def _paper(table: str, row: str, col: str) -> str:
    n = paper.lookup(table, row, col)
    return n.label if n else ""


def _sizes(records: list[dict[str, Any]], sizes: Iterable[str] | None) -> list[str]:
    found = [s for s in dict.fromkeys(_p(r, "size") for r in records) if s]
    return list(sizes) if sizes else found


# ----------------------------------------------------------------------------- tables


def table1(records: list[dict[str, Any]], sizes: Iterable[str] | None = None,
           inits: Iterable[str] = INITS) -> pd.DataFrame:
    """Table 1: APbox / APmask per initialisation and size, the paper's ViT-B/L beside."""
    recs = [r for r in serving(records, "T1") if _is_default(r)]
    rows = []
    for init in inits:
        row: dict[str, Any] = {"init": init}
        for size in _sizes(recs, sizes):
            match = [r for r in recs if _p(r, "init") == init and _p(r, "size") == size]
            row[f"ours {size} APbox"] = _cell(match, "bbox/AP")
            row[f"ours {size} APmask"] = _cell(match, "segm/AP")
        row["paper ViT-B APbox"] = _paper("T1", init, "B APbox")
        row["paper ViT-L APbox"] = _paper("T1", init, "L APbox")
        rows.append(row)
    return pd.DataFrame(rows)


def convergence(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Figure 2's data: AP at each evaluation of each default fine-tune run."""
    rows = []
    for r in serving(records, "F2"):
        if r.get("status") != SUCCESS or not _is_default(r):
            continue
        for h in r.get("eval_history", []):
            rows.append({"size": _p(r, "size"), "init": _p(r, "init"), "epoch": h.get("epoch"),
                         "iter": h.get("iter"), "APbox": finite(h.get("bbox/AP")),
                         "APmask": finite(h.get("segm/AP"))})
    return pd.DataFrame(rows, columns=["size", "init", "epoch", "iter", "APbox", "APmask"])


def paper_convergence() -> pd.DataFrame:
    rows = [{"series": n.row, "epoch": float(n.col), "AP": n.value, "source": n.source,
             "confidence": n.confidence} for n in paper.numbers("F2")]
    return pd.DataFrame(rows)


def _speed_cols(recs: list[dict[str, Any]]) -> dict[str, str]:
    return {"APbox": _cell(recs, "bbox/AP"), "APmask": _cell(recs, "segm/AP"),
            "train s/iter": _cell(recs, "train_s_per_iter", 3),
            "infer s/img": _cell(recs, "infer_s_per_img", 3),
            "train step mem MB": _cell(recs, "step_mem_mb", 0),
            "peak mem MB (CUDA alloc. / CPU RSS)": _cell(recs, "max_mem_mb", 0)}


def table2(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Table 2: multi-scale (FPN) vs single-scale, for each (size, init) with a single-scale run."""
    recs = serving(records, "T2")
    single = [r for r in recs if "model.detector.multi_scale=false" in _overrides(r)]
    keys = list(dict.fromkeys((_p(r, "size"), _p(r, "init")) for r in single)) or [(None, None)]
    rows = []
    for size, init in keys:
        multi = [r for r in recs if _is_default(r) and _p(r, "size") == size
                 and _p(r, "init") == init]
        one = [r for r in single if _p(r, "size") == size and _p(r, "init") == init]
        for name, group in (("multi-scale (FPN)", multi), ("single-scale", one)):
            rows.append({"size": size or NO_RUN, "init": init or NO_RUN, "backbone": name,
                         **_speed_cols(group), "paper APbox": _paper("T2", name, "APbox")})
    df = pd.DataFrame(rows)
    df.attrs["paper_note"] = _paper("T2", "multi-scale (FPN)", "cost")
    return df


def table3(records: list[dict[str, Any]], layouts: Iterable[str] = LAYOUTS) -> pd.DataFrame:
    """Table 3: attention strategies: AP (from fine-tune runs), peak training memory, speed."""
    measured = [r for r in serving(records, "T3") if "layouts" in r.get("metrics", {})
                and r.get("status") == SUCCESS]
    by_layout = {row["layout"]: row for r in measured for row in r["metrics"]["layouts"]}
    rows = []
    for layout in layouts:
        m = by_layout.get(layout)
        if m is None:
            rows.append({"layout": layout, "APbox": NO_RUN, "peak train mem MB": NO_RUN,
                         "train s/iter": NO_RUN, "infer s/img": NO_RUN})
        else:
            rows.append({"layout": layout,
                         "APbox": fmt(m.get("bbox/AP")) if m.get("bbox/AP") is not None
                         else NO_RUN,
                         "peak train mem MB": m.get("error") or fmt(m.get("train_peak_mem_mb"), 0),
                         "train s/iter": fmt(m.get("train_s_per_iter"), 3),
                         "infer s/img": fmt(m.get("infer_s_per_img"), 3)})
        rows[-1]["paper APbox (ViT-L)"] = _paper("T3", layout, "APbox")
    return pd.DataFrame(rows)


def table4(records: list[dict[str, Any]], inits: Iterable[str] | None = None) -> pd.DataFrame:
    """Table 4: APbox for each relative (rows) x absolute (columns) treatment, per init."""
    recs = [r for r in serving(records, "T4") if _p(r, "stage") is None]
    inits = list(inits or dict.fromkeys(_p(r, "init") for r in recs if _p(r, "overrides")))
    rows = []
    for init in inits:
        mine = [r for r in recs if _p(r, "init") == init and r.get("status") == SUCCESS]
        for rel in REL:
            row: dict[str, Any] = {"init": init, "rel-pos": rel}
            for abs_ in ABS:
                match = [r for r in mine if r["metrics"].get("rel_pos_init") == rel
                         and r["metrics"].get("abs_pos_init") == abs_
                         and not any("attention" in o or "multi_scale" in o
                                     for o in _overrides(r))]
                row[f"abs {abs_}"] = _cell(match, "bbox/AP")
            rows.append(row)
    df = pd.DataFrame(rows, columns=["init", "rel-pos", *(f"abs {a}" for a in ABS)])
    df.attrs["paper_note"] = "; ".join(f"{n.row}: {n.label}" for n in paper.numbers("T4"))
    return df


def mae_epochs(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Figure 3's data: APbox against MAE pre-training epochs."""
    rows = []
    for r in serving(records, "F3"):
        if r.get("status") != SUCCESS or _p(r, "init_kind") != "mae" or _overrides(r):
            continue
        if _p(r, "stage") is not None or _p(r, "pretrain_epochs") is None:
            continue
        rows.append({"size": _p(r, "size"), "pretrain epochs": float(_p(r, "pretrain_epochs")),
                     "APbox": finite(r["metrics"].get("bbox/AP")),
                     "APmask": finite(r["metrics"].get("segm/AP")), "run": r["run"]})
    return pd.DataFrame(rows, columns=["size", "pretrain epochs", "APbox", "APmask", "run"])


def tide_table(records: list[dict[str, Any]], inits: Iterable[str] = INITS) -> pd.DataFrame:
    """Figure 4's data: TIDE dAP (IoU 0.5, boxes) per init and error type."""
    found: dict[str, dict[str, Any]] = {}
    for r in serving(records, "F4"):
        for row in r.get("metrics", {}).get("tide", []) if r.get("status") == SUCCESS else []:
            if row.get("init"):
                found[row["init"]] = row
    rows = []
    for init in inits:
        row = found.get(init)
        cells = {e: (fmt(row.get(e), 2) if row and e in row else
                     (row.get("error", NO_RUN) if row else NO_RUN)) for e in TIDE_ERRORS}
        rows.append({"init": init, **cells})
    return pd.DataFrame(rows)


def table5(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Table 5: parameters, FLOPs in both conventions, activations, speed."""
    rows = []
    for r in serving(records, "T5"):
        for m in r.get("metrics", {}).get("models", []) if r.get("status") == SUCCESS else []:
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
        rows.append({"model": NO_RUN})
    df = pd.DataFrame(rows)
    df.attrs["paper_note"] = "; ".join(f"{n.row} {n.col}: {n.label} [{n.source}]"
                                       for n in paper.numbers("T5"))
    return df


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def tuning(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tuning protocol: (lr x wd grid runs, drop-path runs) with their APbox."""
    grid, dp = [], []
    for r in serving(records, "HP"):
        row = {"sweep": _p(r, "sweep"), "init": _p(r, "init"), "lr": _p(r, "lr"),
               "weight_decay": _p(r, "weight_decay"), "drop_path": _p(r, "drop_path"),
               "APbox": _round(finite(r.get("metrics", {}).get("bbox/AP")))
               if r.get("status") == SUCCESS else None, "status": r.get("status")}
        (grid if _p(r, "stage") == "grid" else dp).append(row)
    cols = ["sweep", "init", "lr", "weight_decay", "drop_path", "APbox", "status"]
    return pd.DataFrame(grid, columns=cols), pd.DataFrame(dp, columns=cols)


def paper_table(table: str) -> pd.DataFrame:
    """The paper's numbers for ``table`` with source and confidence."""
    return pd.DataFrame(paper.as_rows(table),
                        columns=["table", "row", "col", "value", "source", "confidence"])


# ----------------------------------------------------------------------------- saving


def to_markdown(df: pd.DataFrame) -> str:
    """A pipe table without optional dependencies (pandas' own needs ``tabulate``)."""
    if df.empty:
        return f"_{NO_RUN}_\n"
    cols = [str(c) for c in df.columns]
    cells = [[("" if (isinstance(v, float) and math.isnan(v)) else str(v)) for v in row]
             for row in df.itertuples(index=False)]
    line = lambda xs: "| " + " | ".join(x.replace("|", "/") for x in xs) + " |"
    return "\n".join([line(cols), line(["---"] * len(cols)), *map(line, cells)]) + "\n"


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str, title: str, note: str = "",
               paper_key: str | None = None) -> Path:
    """``<name>.csv`` and ``<name>.md`` (title, the profile's note, the table, the paper's
    numbers with source and confidence)."""
    from .records import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{name}.csv", df.to_csv(index=False))
    parts = [f"# {title}\n"]
    if note:
        parts.append(f"> **{note}**\n")
    parts.append(to_markdown(df))
    if df.attrs.get("paper_note"):
        parts.append(f"\nPaper: {df.attrs['paper_note']}\n")
    if paper_key:
        parts.append("\nThe paper's numbers (confidence `paper text`: stated in the paper; "
                     "`lower`: other public sources):\n\n" + to_markdown(paper_table(paper_key)))
    write_text_atomic(out / f"{name}.md", "\n".join(parts))
    return out / f"{name}.md"


def write_index(out_dir: str | Path, profile: str, note: str,
                records: list[dict[str, Any]]) -> Path:
    """``README.md`` of the report: the note, every table and figure, the runs' statuses."""
    from .records import provenance, write_text_atomic

    out = Path(out_dir)
    lines = [f"# Study report: profile `{profile}`\n"]
    if note:
        lines.append(f"> **{note}**\n")
    lines.append("Tables (Markdown + CSV):\n")
    lines += [f"- [{p.stem}]({p.name})" for p in sorted(out.glob("*.md")) if p.name != "README.md"]
    lines.append("\nFigures (PNG + SVG):\n")
    lines += [f"- [{p.stem}]({p.name}) ([svg]({p.stem}.svg))" for p in sorted(out.glob("*.png"))]
    lines.append("\nRuns:\n")
    rows = [{"run": r["run"], "status": r["status"],
             "wall s": fmt((r.get("timings") or {}).get("wall_s"), 1)
             if (r.get("timings") or {}).get("wall_s") is not None else "-",
             "git commit": ((r.get("provenance") or {}).get("git_commit") or "")[:10]}
            for r in records]
    lines.append(to_markdown(pd.DataFrame(rows, columns=["run", "status", "wall s", "git commit"])))
    env = provenance()
    lines.append(f"\nRendered {env['time']} on {env['device']} ({env['cpu_count']} CPUs), "
                 f"commit {env['git_commit']}.\n")
    write_text_atomic(out / "README.md", "\n".join(lines))
    return out / "README.md"
