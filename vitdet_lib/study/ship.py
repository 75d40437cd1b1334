"""Ship a study's best fine-tuned detector: of the runs of an init's recipe (Table 1 or Figure 2;
no ablation, no sweep), the one with the highest validation APbox, written as fp16 weights to
``<results_dir>/checkpoints/detector.pth`` (``checkpoint.export``), its sha256 in that run's
record (``artifacts.export``), so the walkthrough can show a detector that detects without
training one.

Called after every ``study run`` of a ``ship_checkpoints`` profile; the choice uses the
validation split only. A run whose work directory is gone (another machine ran it) cannot be
exported; the best run that still has its checkpoint is taken, and the echo says so.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import records as rec
from .cells import SELECT, param, recipe_runs
from .fingerprint import file_sha256

DETECTOR_NAME = "detector.pth"


def _val_ap(r: dict[str, Any]) -> float | None:
    return rec.finite((r.get("metrics") or {}).get(SELECT))


def ship_best_detector(results_dir: Path, run_names: set[str],
                       echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Export the best current Table 1 / Figure 2 recipe run's detector if it is not the one
    shipped already; the export's description, or None when no run qualifies."""
    from vitdet_lib.checkpoint.export import export_detector

    records = [r for r in rec.load_records(results_dir) if r.get("run") in run_names
               and rec.is_success(r)]
    candidates = sorted((r for r in recipe_runs(records) if _val_ap(r) is not None), key=_val_ap,
                        reverse=True)
    out = results_dir / "checkpoints" / DETECTOR_NAME
    shipped = next((r for r in records if (r.get("artifacts") or {}).get("export", {})
                    .get("path", "").endswith(DETECTOR_NAME)), None)
    for r in candidates:
        if shipped is not None and (_val_ap(shipped) or -1.0) >= (_val_ap(r) or -1.0) \
                and out.is_file():
            return shipped["artifacts"]["export"]  # the shipped one is still the best
        source = Path((r.get("artifacts") or {}).get("work_dir", "")) / "last.pth"
        if not source.is_file():
            echo(f"ship: {r['run']} (val APbox {_val_ap(r):.2f}) has no checkpoint here "
                 f"({source}); trying the next best")
            continue
        info = export_detector(source, out)
        info.update(sha256=file_sha256(out), run=r["run"], val_bbox_AP=_val_ap(r),
                    init=param(r, "init"))
        if shipped is not None and shipped["run"] != r["run"]:
            old = dict(shipped)
            old["artifacts"] = {k: v for k, v in old["artifacts"].items() if k != "export"}
            rec.write_json_atomic(rec.record_path(results_dir, shipped["run"]), old)
        r["artifacts"] = {**(r.get("artifacts") or {}), "export": info}
        rec.write_json_atomic(rec.record_path(results_dir, r["run"]), r)
        echo(f"ship: {r['run']} (val APbox {_val_ap(r):.2f}) written to {out} "
             f"({info['bytes'] / 1e6:.1f} MB)")
        return info
    return None
