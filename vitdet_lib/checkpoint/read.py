"""Read checkpoint files and load state dicts with errors a user can act on.

``torch.load`` reports a broken file as ``PytorchStreamReader failed ...``, ``EOFError`` or
``KeyError: 101``, without the file's name; ``load_state_dict`` lists every size mismatch on its
own line. Here a failure is one :class:`CheckpointError` naming the path, what kind of file it
really is (missing, empty, truncated zip, text, not a torch file) and, for a model that does
not fit, how many keys are missing / unexpected / of another shape with the first few of each.
"""
from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

_SHOWN = 5  # keys listed per kind of mismatch; the rest are counted
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # pickle protocol >= 2: the legacy (pre-1.6) torch.save format
_NUMPY_MAGIC = b"\x93NUMPY"
# descriptions that are guesses: the message then also quotes torch.load's error
_UNSURE = ("a torch zip checkpoint that does not load", "not a torch checkpoint")


def read_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` a checkpoint safely (``weights_only``) onto the CPU.

    MAE's and BEiT's training scripts store their ``argparse.Namespace`` beside the weights;
    that one class is allowed, any other pickled object is refused.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a torch file, or holds
            pickled objects other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "no such file"
        raise CheckpointError(f"{path}: {what}; check the checkpoint path")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint: an interrupted "
                              f"copy or download? Copy it again")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _head(path).startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
            raise CheckpointError(f"{path}: holds pickled Python objects other than tensors and "
                                  f"plain containers; refusing to unpickle them "
                                  f"({_first_line(err)})") from err
        raise CheckpointError(f"{path}: {describe_file(path)}") from err
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, OSError) as err:
        what = describe_file(path)
        if what.startswith(_UNSURE):  # torch's own words are then the best clue
            what += f" (torch.load: {type(err).__name__}: {_first_line(err)})"
        raise CheckpointError(f"{path}: {what}") from err


def describe_file(path: Path) -> str:
    """What a file that ``torch.load`` could not read most likely is, and what to do."""
    head, size = _head(path), path.stat().st_size
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"truncated zip archive ({size} bytes, its end is missing): an interrupted "
                    f"write or copy; use an earlier checkpoint or copy it again")
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith("data.pkl") for n in archive.namelist()):
                return "a zip archive, but not a torch checkpoint (no data.pkl inside)"
        return f"{_UNSURE[0]} (a corrupt entry?)"
    if head.startswith(_PICKLE_PROTO):
        return (f"truncated or corrupt legacy torch/pickle file ({size} bytes); use an earlier "
                f"checkpoint or copy it again")
    if head.startswith(_NUMPY_MAGIC):
        return "a NumPy .npy array, not a torch checkpoint"
    text = _as_text(head)
    if text is not None:
        return f"a text file, not a torch checkpoint (it starts with {text!r})"
    return f"{_UNSURE[1]} (unrecognised first bytes {head[:8].hex(' ')})"


def _head(path: Path, n: int = 256) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:60]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else ""


def model_state_of(obj: Any, source: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The model weights in a loaded checkpoint: a training checkpoint (key ``model``) or a
    bare state dict; DDP's ``module.`` prefix removed.

    Raises:
        CheckpointError: ``obj`` is not a dict of tensors (naming what it holds instead).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict or a "
                              f"training checkpoint (a dict with 'model')")
    state = obj.get("model", obj)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: 'model' holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        keys = sorted(map(str, obj))[:_SHOWN]
        raise CheckpointError(f"{source}: a dict without model weights: expected 'model' (a "
                              f"training checkpoint) or parameter names with tensors, found keys "
                              f"{keys}{' ...' if len(obj) > _SHOWN else ''}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_model_state(model: nn.Module, obj: Any, source: str | os.PathLike[str]) -> None:
    """Load the weights in checkpoint ``obj`` into ``model`` strictly, or raise one summary.

    Args:
        model: the configured model (unwrapped, not DDP).
        obj: a loaded checkpoint (see :func:`model_state_of`).
        source: its path, for messages.
    Raises:
        CheckpointError: missing, unexpected or differently shaped keys, counted with the
            first few of each (a checkpoint of another architecture gives one message).
    """
    state = model_state_of(obj, source)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    parts = [_summary("missing key(s) the model needs", missing),
             _summary("unexpected key(s)", unexpected),
             _summary("shape mismatch(es), checkpoint vs model", shapes)]
    parts = [p for p in parts if p]
    if parts:
        raise CheckpointError(f"{source} does not fit the configured model (another architecture "
                              f"or params file?): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _summary(what: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{len(items)} {what}: {', '.join(items[:_SHOWN])}{more}"
