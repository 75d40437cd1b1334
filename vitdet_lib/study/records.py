"""Result records: one ``record.json`` per run under ``<results_dir>/runs/<run>/``.

A record says what ran (parameters, notebook), what came out (metrics), and where it came
from (git commit, package versions, device, timings). ``status`` is ``success`` (written by the
experiment notebook at its end), ``failed`` (written by the runner, with the traceback) or
``skipped`` (a run it needs did not succeed). Writes are atomic: a reader never sees half a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vitdet_lib.io import finite, provenance, read_json, write_json_atomic, write_text_atomic

__all__ = ["FAILED", "RECORD_NAME", "SKIPPED", "SUCCESS", "finite", "is_success",
           "load_records", "make_record", "provenance", "read_record", "record_path",
           "write_json_atomic", "write_text_atomic"]

RECORD_NAME = "record.json"
SUCCESS, FAILED, SKIPPED = "success", "failed", "skipped"


def record_path(results_dir: str | Path, run: str) -> Path:
    return Path(results_dir) / "runs" / run / RECORD_NAME


def read_record(path: str | Path) -> dict[str, Any] | None:
    return read_json(path)


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable record under ``<results_dir>/runs``, in name order."""
    root = Path(results_dir) / "runs"
    out = [read_record(p) for p in sorted(root.glob(f"*/{RECORD_NAME}"))]
    return [r for r in out if r is not None]


def make_record(run: str, status: str, *, parameters: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None, timings: dict[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    params = dict(parameters or {})
    return {"run": run, "status": status, "serves": params.get("serves", []),
            "parameters": params, "metrics": metrics or {}, "timings": timings or {},
            "provenance": provenance(), **extra}


def is_success(record: dict[str, Any] | None) -> bool:
    return bool(record) and record.get("status") == SUCCESS
