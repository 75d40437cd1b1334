"""The run records a training writes beside its checkpoints: JSON lines, JSON, provenance."""
from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: Path, iteration: int) -> None:
    """Drop the records of steps after ``iteration`` (a resumed run redoes those steps)."""
    if not path.is_file():
        return
    text = "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r["iter"] <= iteration)
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (NaN metrics are written as ``NaN``)."""
    text = json.dumps(data, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                              cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def provenance(device: torch.device) -> dict[str, Any]:
    """Where a result came from: code version (and whether it had local edits), library
    versions, hardware, time."""
    import torchvision

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "--verify", "HEAD"),
            "git_dirty": None if status is None else bool(status),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "hostname": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
