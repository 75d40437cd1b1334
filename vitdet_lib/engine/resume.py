"""Resuming a run: find a loadable checkpoint, and check the config before anything is written.

A resume compares the run's new config with the one stored in its checkpoint, key by key:

- ``refused`` keys (the architecture, the initialisation, the pre-training method) never
  change within a run: the weights in the checkpoint would contradict the config;
- ``free`` keys (logging, checkpoint cadence, workers, device, evaluation) may change;
- every other key (schedule, optimizer, data, batch) changes only with ``allow_changes``, and
  each accepted change is appended to ``changes.jsonl`` in the run directory.

The most specific rule wins (``model.backbone.drop_path_rate`` may be guarded inside a refused
``model``). Keys only one of the two configs has are schema changes between versions of this
library, not changes of the run, and are ignored.

The check runs before ``config.yaml`` is rewritten, so a refused resume leaves the run as it was.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from . import checkpoint as ckpt
from . import records

log = logging.getLogger(__name__)

CHANGES_NAME = "changes.jsonl"


class ResumeConflictError(ConfigError):
    """The new config differs from the checkpoint's in a way a resume cannot honour."""


@dataclass(frozen=True)
class ResumeRules:
    """Key prefixes (dotted paths) by how a resume treats their changes (module docstring);
    keys under none of them are guarded."""

    refused: tuple[str, ...]
    free: tuple[str, ...]
    guarded: tuple[str, ...] = ()

    def kind(self, key: str) -> str:
        """``"refused"``, ``"free"`` or ``"guarded"``: the kind of the longest matching prefix."""
        best, kind = -1, "guarded"
        for name, prefixes in (("refused", self.refused), ("free", self.free),
                               ("guarded", self.guarded)):
            for p in prefixes:
                if (key == p or key.startswith(p + ".")) and len(p) > best:
                    best, kind = len(p), name
        return kind


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """``{dotted key: [old, new]}`` for every key both configs have with different values."""
    a, b = flatten(old), flatten(new)
    return {k: [a[k], b[k]] for k in sorted(set(a) & set(b)) if a[k] != b[k]}


def check_resume(old: dict[str, Any], new: dict[str, Any], rules: ResumeRules, *,
                 allow_changes: bool, checkpoint: Path) -> dict[str, list[Any]]:
    """The accepted changes of a resume (empty when the configs agree).

    Raises:
        ResumeConflictError: a refused key changed, or a guarded key changed without
            ``allow_changes``; the message lists each key with its old and new value.
    """
    changes = {k: v for k, v in config_changes(old, new).items() if rules.kind(k) != "free"}
    refused = {k: v for k, v in changes.items() if rules.kind(k) == "refused"}

    def listed(items: dict[str, list[Any]]) -> str:
        return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in items.items())

    if refused:
        raise ResumeConflictError(
            f"cannot resume {checkpoint}: its weights were trained with another model "
            f"({listed(refused)}); use a new output directory for a new model")
    if changes and not allow_changes:
        raise ResumeConflictError(
            f"resuming {checkpoint} with a changed config ({listed(changes)}); pass "
            "--allow-changes (allow_changes=True) to continue with the new values, or use a new "
            "output directory")
    return changes


def record_changes(folder: Path, iteration: int, changes: dict[str, list[Any]]) -> None:
    """Append the accepted changes of a resume to ``changes.jsonl`` (and log them)."""
    if not changes:
        return
    records.append_jsonl(folder / CHANGES_NAME,
                         {"iter": iteration, "time": time.time(), "changes": changes})
    log.warning("resumed at iteration %d with changed settings: %s", iteration,
                ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))


def load_newest(candidates: Sequence[Path], map_location: str | torch.device = "cpu"
                ) -> tuple[Path, dict[str, Any]] | None:
    """The first of ``candidates`` (newest first) that loads; one warning per skipped file.

    Raises:
        RuntimeError: files exist but none loads.
    """
    existing = [p for p in candidates if p.is_file()]
    failed: list[str] = []
    for path in existing:
        try:
            state = ckpt.load_checkpoint(path, map_location=map_location)
        # a torn or corrupt file: torch reports it in one of these, depending on the damage
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            failed.append(f"{path.name} ({reason})")
            continue
        if failed:  # one line, whatever the number of skipped files
            log.warning("resuming from %s, the newest loadable checkpoint; skipped %s", path,
                        ", ".join(failed))
        return path, state
    if existing:
        raise RuntimeError(f"no checkpoint in {existing[0].parent} can be loaded: "
                           f"{'; '.join(failed)}; remove them to start afresh")
    return None


def resume_candidates(folder: str | os.PathLike[str]) -> list[Path]:
    """``last.pth`` then the periodic checkpoints, newest first."""
    folder = Path(folder)
    periodic = [p for _, p in reversed(ckpt.periodic_checkpoints(folder))]
    return [folder / ckpt.LAST_NAME, *periodic]


def keep_configured_hyperparameters(optimizer: torch.optim.Optimizer,
                                    load: Any, state: dict[str, Any]) -> None:
    """``load(state)`` (an optimizer's ``load_state_dict``), then put back the configured
    per-group settings that loading overwrote with the checkpoint's (lr, weight decay,
    betas): after an allowed change the new values hold, not the stored ones."""
    keys = ("initial_lr", "lr", "weight_decay", "betas", "eps")
    configured = [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups]
    load(state)
    for group, values in zip(optimizer.param_groups, configured):
        group.update(values)


def restore_optimization(optimizer: torch.optim.Optimizer, schedule: Any, scaler: Any,
                         state: dict[str, Any], *, changed: bool) -> None:
    """Optimizer, lr schedule and grad scaler from a checkpoint (fine-tuning and pre-training
    alike); ``changed``: the config differs in accepted ways, so the configured optimizer
    settings and schedule length replace the stored ones."""
    if changed:
        keep_configured_hyperparameters(optimizer, optimizer.load_state_dict, state["optimizer"])
    else:
        optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"], strict=not changed)
    scaler.load_state_dict(state["scaler"])
