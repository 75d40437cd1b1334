"""Tables as Markdown + CSV files, and the report's index page."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from vitdet_lib.io import provenance, write_text_atomic

from . import paper

NO_RUN = "no run"


PROTOCOL = """How the numbers were made (docs/paper.md, "Tuning protocol"):

- Each initialisation is tuned on its own: an lr x weight-decay grid (drop path 0), widened
  while the best point is on its border, then drop path at the best point; random init trains
  its schedules `schedule_factor` (4) times longer, in tuning and in final runs.
- Final runs use their init's tuned values, every schedule the profile lists (separately
  trained, each with its own full cosine decay), several seeds.
- Every selection (the sweeps' winners, Table 1's schedule) is made on the validation scenes;
  every reported number is measured on held-out test scenes composed from a third, disjoint
  pool of items, as mean ± sd over seeds.
- A run counts only when its record matches its current params, params files, upstream
  checkpoint, data source and code; otherwise it shows as `stale` and is not used."""


def paper_table(table: str) -> pd.DataFrame:
    """The paper's numbers for ``table`` with source and confidence."""
    return pd.DataFrame(paper.as_rows(table),
                        columns=["table", "row", "col", "value", "source", "confidence"])


def _text(v: object) -> str:
    """A cell for reading: a float as written when short (48.0, 0.0012), else to 4 significant
    digits (the CSV beside keeps them all)."""
    if not isinstance(v, float):
        return str(v)
    if math.isnan(v):
        return ""
    short = repr(float(v))
    if len(short) <= 7:
        return short
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"


def to_markdown(df: pd.DataFrame) -> str:
    """A pipe table without optional dependencies (pandas' own needs ``tabulate``)."""
    if df.empty:
        return f"_{NO_RUN}_\n"
    cols = [str(c) for c in df.columns]
    cells = [[_text(v) for v in row] for row in df.itertuples(index=False)]

    def line(xs: list[str]) -> str:
        return "| " + " | ".join(x.replace("|", "/") for x in xs) + " |"

    return "\n".join([line(cols), line(["---"] * len(cols)), *map(line, cells)]) + "\n"


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str, title: str, note: str = "",
               paper_key: str | None = None) -> Path:
    """``<name>.csv`` and ``<name>.md`` (title, the profile's note, the table, its notes, the
    paper's numbers with source and confidence)."""
    out = Path(out_dir)
    write_text_atomic(out / f"{name}.csv", df.to_csv(index=False))
    parts = [f"# {title}\n"]
    if note:
        parts.append(f"> **{note}**\n")
    parts.append(to_markdown(df))
    if df.attrs.get("protocol_note"):
        parts.append(f"\n{df.attrs['protocol_note']}\n")
    if df.attrs.get("paper_note"):
        parts.append(f"\nPaper: {df.attrs['paper_note']}\n")
    if paper_key:
        parts.append("\nThe paper's numbers (confidence `paper text`: stated in the paper; "
                     "`lower`: other public sources):\n\n" + to_markdown(paper_table(paper_key)))
    write_text_atomic(out / f"{name}.md", "\n".join(parts))
    return out / f"{name}.md"


def write_index(out_dir: str | Path, profile: str, note: str,
                records: list[dict[str, Any]], ignored: int = 0) -> Path:
    """``README.md`` of the report: the note, every table and figure, every run's state."""
    out = Path(out_dir)
    lines = [f"# Study report: profile `{profile}`\n"]
    if note:
        lines.append(f"> **{note}**\n")
    lines.append(PROTOCOL + "\n")
    lines.append("Tables (Markdown + CSV):\n")
    lines += [f"- [{p.stem}]({p.name})" for p in sorted(out.glob("*.md")) if p.name != "README.md"]
    lines.append("\nFigures (PNG + SVG):\n")
    lines += [f"- [{p.stem}]({p.name}) ([svg]({p.stem}.svg))" for p in sorted(out.glob("*.png"))]
    lines.append("\nRuns (state `stale`: the record no longer matches its params, upstream "
                 "checkpoint, data or code; it is not used in any table):\n")
    rows = [{"run": r["run"], "state": r.get("state", r.get("status")),
             "why": (r.get("state_reason") or "")[:120],
             "wall s": f"{(r.get('timings') or {}).get('wall_s'):.1f}"
             if (r.get("timings") or {}).get("wall_s") is not None else "-",
             "git commit": ((r.get("provenance") or {}).get("git_commit") or "")[:10]}
            for r in records]
    lines.append(to_markdown(pd.DataFrame(rows, columns=["run", "state", "why", "wall s",
                                                         "git commit"])))
    if ignored:
        lines.append(f"\n{ignored} record(s) under runs/ belong to no run of this profile and "
                     "were ignored.\n")
    env = provenance()
    lines.append(f"\nRendered {env['time']} on {env['device']} ({env['cpu_count']} CPUs), "
                 f"commit {env['git_commit']}.\n")
    write_text_atomic(out / "README.md", "\n".join(lines))
    return out / "README.md"
