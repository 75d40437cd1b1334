"""Result records: one ``record.json`` per run under ``<results_dir>/runs/<run>/``.

A record says what ran (parameters, notebook), what came out (metrics), and where it came
from (git commit, package versions, device, timings). ``status`` is ``success`` (written by the
experiment notebook at its end), ``failed`` (written by the runner, with the traceback) or
``skipped`` (a run it needs did not succeed). Writes are atomic: a reader never sees half a file.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD_NAME = "record.json"
SUCCESS, FAILED, SKIPPED = "success", "failed", "skipped"
PACKAGES = ("torch", "torchvision", "numpy", "pycocotools", "papermill", "pandas", "seaborn",
            "matplotlib", "tidecv")


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(data), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def record_path(results_dir: str | Path, run: str) -> Path:
    return Path(results_dir) / "runs" / run / RECORD_NAME


def read_record(path: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable record under ``<results_dir>/runs``, in name order."""
    root = Path(results_dir) / "runs"
    out = [read_record(p) for p in sorted(root.glob(f"*/{RECORD_NAME}"))]
    return [r for r in out if r is not None]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False,
                              cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Code version, package versions, device, host and time of a result."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"git_commit": _git("rev-parse", "--verify", "HEAD"),
            "git_dirty": None if status is None else bool(status),
            "python": platform.python_version(), "packages": versions, "device": device,
            "cpu_count": os.cpu_count(), "torch_threads": threads,
            "load_average": list(load) if load else None, "hostname": platform.node(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def make_record(run: str, status: str, *, parameters: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None, timings: dict[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    params = dict(parameters or {})
    return {"run": run, "status": status, "serves": params.get("serves", []),
            "parameters": params, "metrics": metrics or {}, "timings": timings or {},
            "provenance": provenance(), **extra}


def is_success(record: dict[str, Any] | None) -> bool:
    return bool(record) and record.get("status") == SUCCESS


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
