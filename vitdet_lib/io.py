"""Atomic writes and the provenance record: the one I/O layer every writer of the package uses.

A write goes to a temporary file in the target's folder, is flushed to disk, then renamed over
the target with ``os.replace``: a crash or Ctrl-C at any moment leaves either the old or the
new file, never half of one. Files get the mode a plain ``open`` would give them (``mkstemp``
alone makes them private, 0600).
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import IO, Any

PACKAGES = ("torch", "torchvision", "numpy", "pycocotools", "papermill", "pandas", "seaborn",
            "matplotlib", "tidecv")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(binary_file)`` on a temporary file, then move it to ``path`` atomically.

    On any exception (KeyboardInterrupt included) the temporary file is removed and the
    previous ``path``, if any, is left untouched. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def jsonable(value: Any) -> Any:
    """``value`` with paths as strings and numpy/torch scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "value") and type(value).__module__ != "builtins" and isinstance(
            value.value, (str, int, float)):  # enums
        return value.value
    return value


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 1,
                      **dump_kwargs: Any) -> Path:
    """``data`` as JSON (NaN written as ``NaN``, as Python's json does), atomically."""
    return write_text_atomic(path, json.dumps(jsonable(data), indent=indent, **dump_kwargs))


def torch_save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- provenance


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              check=False, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str | None:
    """The package's commit, or None outside a git checkout."""
    return _git("rev-parse", "--verify", "HEAD")


def provenance(device: Any = None) -> dict[str, Any]:
    """Where a result came from: code version (and whether the package had local edits),
    package versions, device, threads, load, host and time.

    Args:
        device: the torch device the result was measured on (None: CUDA if present, else CPU).
    """
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    name, threads = f"CPU ({platform.processor() or platform.machine()})", None
    try:
        import torch

        threads = torch.get_num_threads()
        dev = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev)
    except ImportError:
        pass
    # local edits to the package: the commit alone would not name the code that ran
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"git_commit": git_commit(), "git_dirty": None if status is None else bool(status),
            "python": platform.python_version(), "packages": versions, "device": name,
            "cpu_count": os.cpu_count(), "torch_threads": threads,
            "load_average": list(load) if load else None, "hostname": platform.node(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
