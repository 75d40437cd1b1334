"""Hooks of the training loop: step logging, progress bar, periodic checkpoints, evaluation.

Each hook is one concern; fine-tuning and pre-training register the ones they need
(``trainer.py``, ``pretrain/engine.py``).
"""
from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed as du
from . import records
from .loop import HookBase

log = logging.getLogger(__name__)


def is_log_step(iteration: int, total: int, every: int) -> bool:
    """Every ``every`` steps, plus the first and the last."""
    return iteration % every == 0 or iteration in (1, total)


def window_mean(window: list[dict[str, float]]) -> dict[str, float]:
    """Each key averaged over the window's records; ``lr`` is the last step's value."""
    line = {key: sum(r[key] for r in window) / len(window) for key in window[-1]}
    line["lr"] = window[-1]["lr"]
    return line


class WindowLogger(HookBase):
    """Averages step records over ``every`` steps and hands each mean to ``write`` (rank 0).

    Args:
        every: steps per line (the first and the last step get a line of their own).
        write: ``(iteration, mean record) -> None``, e.g. append a JSON line.
    """

    def __init__(self, every: int, write: Callable[[int, dict[str, float]], None]) -> None:
        self.every, self.write = every, write
        self.window: list[dict[str, float]] = []

    def after_step(self, record: dict[str, float]) -> None:
        self.window.append(record)
        if is_log_step(self.loop.iteration, self.loop.total_iters, self.every):
            if self.loop.info.is_main:
                self.write(self.loop.iteration, window_mean(self.window))
            self.window = []


class ProgressBar(HookBase):
    """A tqdm bar on an interactive terminal (rank 0), loss and lr in its postfix."""

    def __init__(self, desc: str = "train") -> None:
        self.desc = desc
        self.bar: tqdm | None = None

    def before_train(self) -> None:
        self.bar = tqdm(total=self.loop.total_iters, initial=self.loop.iteration, desc=self.desc,
                        dynamic_ncols=True,
                        disable=not (self.loop.info.is_main and sys.stderr.isatty()))

    def after_step(self, record: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class PeriodicCheckpoint(HookBase):
    """Saves every ``every`` steps and after the last one (``save``: the loop's own)."""

    def __init__(self, every: int, save: Callable[[], Any]) -> None:
        self.every, self.save = every, save

    def after_step(self, record: dict[str, float]) -> None:
        it = self.loop.iteration
        if it % self.every == 0 or it == self.loop.total_iters:
            self.save()


def format_eval(record: dict[str, Any]) -> str:
    """One line: where, then box and mask AP and box AP50 (percent)."""
    def num(key: str) -> str:
        value = record.get(key)
        return f"{value:.2f}" if isinstance(value, float) and math.isfinite(value) else "n/a"

    return (f"eval iter {record['iter']} ({100 * record['fraction']:.0f}% of the schedule): "
            f"APbox {num('bbox/AP')}  APmask {num('segm/AP')}  AP50 {num('bbox/AP50')}")


class PeriodicEvaluation(HookBase):
    """Evaluates after the steps in ``at`` (every rank, training RNG state put aside); rank 0
    appends each record to ``path`` and prints its one-line summary.

    Args:
        at: the iterations after which to evaluate.
        evaluate: ``(bare model, tag) -> metrics``; ``tag`` names the point (``iter_0000100``).
        model: the bare model (switched to eval mode and back).
        path: the JSON-lines file of evaluation records.
        history: the records so far (restored on resume); appended to.
        epoch: ``iteration -> epoch`` for the records.
    """

    def __init__(self, at: list[int], evaluate: Callable[[nn.Module, str], dict[str, float]],
                 model: nn.Module, path: Path, history: list[dict[str, Any]],
                 epoch: Callable[[int], float]) -> None:
        self.at, self.evaluate, self.model = set(at), evaluate, model
        self.path, self.history, self.epoch = path, history, epoch

    def after_step(self, record: dict[str, float]) -> None:
        if self.loop.iteration in self.at:
            self.run()

    def run(self) -> None:
        it, info = self.loop.iteration, self.loop.info
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [info.device] if info.device.type == "cuda" else []
        start = time.perf_counter()
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                metrics = self.evaluate(self.model, f"iter_{it:07d}")
        finally:
            self.model.train()
            random.setstate(py_state)
            np.random.set_state(np_state)
        rec = {"iter": it, "epoch": round(self.epoch(it), 6),
               "fraction": it / self.loop.total_iters, **metrics,
               "eval_time_s": time.perf_counter() - start}
        self.history.append(rec)
        if info.is_main:
            records.append_jsonl(self.path, rec)
            print(format_eval(rec), flush=True)
        du.barrier()
