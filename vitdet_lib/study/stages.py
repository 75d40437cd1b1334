"""Each stage of a study as it ran: its runs, their wall time, when, and at which commit.

Read from the run records alone (each keeps its ``timings.wall_s`` and, in ``provenance``, the
time it was written and the git commit), so the table is right whatever machine or session ran
which stage.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from .profile import StudyProfile, expand_runs


def stage_of_runs(profile: StudyProfile) -> dict[str, str]:
    """Run name -> stage for the profile's static runs, plus a prefix entry per sweep node
    (``<sweep>-<init>-``) for the sweep runs, whose names depend on results."""
    out = {r.name: r.stage for r in expand_runs(profile)}
    for s in profile.sweeps:
        for init in s.inits:
            out[f"{s.name}-{init}-"] = s.stage
    return out


def stage_lookup(profile: StudyProfile) -> Callable[[str], str]:
    """``run name -> stage`` for the profile (``?`` for names it does not know)."""
    stages = stage_of_runs(profile)
    return lambda name: _stage(name, stages)


def _stage(name: str, stages: dict[str, str]) -> str:
    if name in stages:
        return stages[name]
    prefix = max((k for k in stages if k.endswith("-") and name.startswith(k)), key=len,
                 default=None)
    return stages[prefix] if prefix else "?"


def stage_times(profile: StudyProfile, records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per stage with finished runs: runs, summed run wall time, elapsed time from the
    first run's start to the last one's end, the dates and the commits."""
    stages = stage_of_runs(profile)
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        wall = (r.get("timings") or {}).get("wall_s")
        prov = r.get("provenance") or {}
        if r.get("status") != "success" or not prov.get("time"):
            continue
        end = datetime.strptime(prov["time"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        # a measurement (memory / time, complexity, TIDE) records no wall time of its own: it
        # counts as a run of its stage and spans no time before it was written
        start = end - (wall or 0.0)
        row = rows.setdefault(_stage(r["run"], stages), {
            "runs": 0, "run wall s": 0.0, "start": start, "end": end, "commits": set()})
        row["runs"] += 1
        row["run wall s"] += wall or 0.0
        row["start"], row["end"] = min(row["start"], start), max(row["end"], end)
        row["commits"].add(str(prov.get("git_commit") or "?")[:7]
                           + ("+dirty" if prov.get("git_dirty") else ""))
    out = []
    for stage in sorted(rows, key=lambda s: rows[s]["start"]):  # in the order they ran
        row = rows[stage]
        out.append({"stage": stage, "runs": row["runs"],
                    "elapsed min": round((row["end"] - row["start"]) / 60, 1),
                    "run wall min": round(row["run wall s"] / 60, 1),
                    "finished (UTC)": datetime.fromtimestamp(row["end"], tz=timezone.utc).strftime(
                        "%Y-%m-%d %H:%M"),
                    "commit": ", ".join(sorted(row["commits"]))})
    return pd.DataFrame(out, columns=["stage", "runs", "elapsed min", "run wall min",
                                      "finished (UTC)", "commit"])
