"""How one table cell is made from run records: which records count (current successes only),
their parameters, and ``mean ± sd (n)`` over seeds with the states of the runs that gave none.

Selection uses the validation split's ``bbox/AP`` (``SELECT``); reported numbers are the test
split's (``TEST`` prefix) whenever the runs have them.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from .records import SUCCESS, finite
from .render import NO_RUN

SELECT = "bbox/AP"  # validation split
TEST = "test/"  # prefix of the test split's metrics


def serving(records: Iterable[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    """Records of runs that feed ``table`` (all states)."""
    return [r for r in records if table in (r.get("serves") or [])]


def state_of(r: dict[str, Any]) -> str:
    return r.get("state") or r.get("status") or NO_RUN


def is_current(r: dict[str, Any]) -> bool:
    return state_of(r) == SUCCESS


def param(r: dict[str, Any], key: str) -> Any:
    return (r.get("parameters") or {}).get(key)


# overrides that change only what a run reports along the way, not what it trains: a Table 1
# run that also evaluates at each quarter of its schedule is still its init's recipe
REPORTING_ONLY = ("train.eval_at", "train.log_every", "train.checkpoint_every")


def overrides_of(r: dict[str, Any]) -> list[str]:
    """The run's overrides that change what it trains (the ablation it is)."""
    return [o for o in param(r, "overrides") or []
            if o.split("=", 1)[0].strip() not in REPORTING_ONLY]


def is_sweep(r: dict[str, Any]) -> bool:
    return param(r, "stage") in ("grid", "drop_path")


def is_recipe(r: dict[str, Any]) -> bool:
    """A run of its init's recipe (Table 1 / Figure 2 rows): no ablation overrides, no sweep."""
    return not overrides_of(r) and not is_sweep(r)


def recipe_runs(records: Iterable[dict[str, Any]], tables: Iterable[str] = ("T1", "F2")
                ) -> list[dict[str, Any]]:
    """Records of the inits' recipe runs that feed any of ``tables`` (all states)."""
    want = set(tables)
    return [r for r in records if want & set(r.get("serves") or []) and is_recipe(r)]


def schedule_of(r: dict[str, Any]) -> float | None:
    """The schedule as the profile lists it (random init trains ``schedule_factor`` x it)."""
    return finite(param(r, "schedule_epochs"))


def f3_runs(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Figure 3's runs: MAE-initialised recipe runs that serve it and, at each fine-tuning
    schedule those use, the MAE recipe runs of Table 1 / Figure 2 (the default pre-training's
    point), so an F3 run at a longer schedule is set against the same-schedule default."""
    records = list(records)
    mae = [r for r in records if is_recipe(r) and param(r, "init_kind") == "mae"
           and param(r, "pretrain_epochs") is not None]
    own = [r for r in mae if "F3" in (r.get("serves") or [])]
    schedules, names = {schedule_of(r) for r in own}, {r["run"] for r in own}
    return own + [r for r in recipe_runs(mae) if r["run"] not in names
                  and schedule_of(r) in schedules]


def by_schedule(recs: Iterable[dict[str, Any]]) -> dict[float | None, list[dict[str, Any]]]:
    """Runs grouped by their listed schedule, shortest first."""
    groups = group_by(list(recs), "schedule")
    return {k[0]: g for k, g in sorted(groups.items(), key=lambda kv: kv[0][0] or 0.0)}


def fmt(value: Any, digits: int = 1) -> str:
    v = finite(value)
    if v is None:
        return NO_RUN if value is None else str(value)
    return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2g}"


def fmt_epochs(value: Any) -> str:
    v = finite(value)
    return NO_RUN if v is None else f"{v:g}"


def values_of(recs: list[dict[str, Any]], metric: str) -> list[float]:
    return [v for r in recs if is_current(r) and (v := finite((r.get("metrics") or {}).get(metric)))
            is not None]


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def other_states(recs: list[dict[str, Any]]) -> str:
    """``"2 failed, 1 stale"`` for the runs of a cell that did not give a number."""
    counts: dict[str, int] = {}
    for r in recs:
        if not is_current(r):
            counts[state_of(r)] = counts.get(state_of(r), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def cell(recs: list[dict[str, Any]], metric: str, digits: int = 1) -> str:
    """``mean ± sd (n=k)`` of ``metric`` over the cell's current runs (one run: the value),
    with the states of the runs that gave none; the state alone when none did."""
    values = values_of(recs, metric)
    others = other_states(recs)
    if not values:
        return others or ("no metric" if recs else NO_RUN)
    text = fmt(values[0], digits) if len(values) == 1 else (
        f"{fmt(statistics.mean(values), digits)} ± {fmt(statistics.stdev(values), digits)} "
        f"(n={len(values)})")
    return f"{text} [{others}]" if others else text


def report_metric(recs: list[dict[str, Any]], metric: str) -> str:
    """The test split's ``metric`` when the runs have it, else the validation one (and the
    caller's table says so)."""
    return TEST + metric if values_of(recs, TEST + metric) else metric


def group_by(recs: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault(tuple(schedule_of(r) if k == "schedule" else param(r, k) for k in keys),
                          []).append(r)
    return groups
