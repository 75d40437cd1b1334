"""Crash-safe training checkpoints and the RNG state that makes a resume exact.

Layout of a run directory::

    checkpoint_0001000.pth   periodic checkpoints, the newest ``keep_last`` are kept
    last.pth                 a copy of the newest one, an independent file

Every file is written to a temporary name in the same directory, fsync'ed and moved into place
with ``os.replace``, so a crash at any moment leaves either the old or the new file, never a
torn one. ``last.pth`` is a real copy, not a link, so damage to one file (a truncation, a bad
block) leaves the other intact, and a resume falls back to the newest periodic checkpoint
that loads (``resume.py``).

Checkpoints hold only tensors and plain Python data, so they load with ``weights_only=True``.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write, torch_save_atomic

LAST_NAME = "last.pth"
_PERIODIC = re.compile(r"^checkpoint_(\d+)\.pth$")


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:07d}.pth"


def _copy_to_last(target: Path) -> Path:
    """Write ``last.pth`` as an atomic copy of ``target``."""
    def copy(f) -> None:
        with open(target, "rb") as src:
            shutil.copyfileobj(src, f, length=2**24)

    return atomic_write(target.parent / LAST_NAME, copy)


def periodic_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the periodic checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PERIODIC.match(p.name))]
    return sorted(found)


def save_checkpoint(state: dict[str, Any], folder: str | os.PathLike[str], *, iteration: int,
                    keep_last: int = 2) -> Path:
    """Write ``state`` as ``checkpoint_<iteration>.pth`` and as ``last.pth``, prune old ones.

    Returns:
        The path of the new checkpoint.
    """
    folder = Path(folder)
    path = folder / checkpoint_name(iteration)
    torch_save_atomic(state, path)
    _copy_to_last(path)
    # prune only after last.pth holds the new state, so a complete checkpoint always survives
    for _, old in periodic_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def last_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """``folder/last.pth`` if it exists."""
    path = Path(folder) / LAST_NAME
    return path if path.is_file() else None


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def model_state_from(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights in a training checkpoint (key ``model``) or a bare state dict."""
    state = obj.get("model", obj)
    return {k.removeprefix("module."): v for k, v in state.items()}


# ----------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator a training step may draw from.

    NumPy's state is stored as plain lists and ints (not an ndarray) so the checkpoint stays
    loadable with ``weights_only=True``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    # a tuple from pickling may come back as nested lists; random.setstate needs tuples
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

