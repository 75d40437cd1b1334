"""The training loop both kinds of training run: an iteration count, one step, and hooks.

:class:`TrainLoop` owns the iteration count and calls its hooks around each step; subclasses
say what one step is (:meth:`TrainLoop.run_step`, usually :class:`~.step.StepMachinery`) and
how to save a checkpoint. Logging, evaluation, checkpoints and progress are hooks.

Interrupts: while the loop runs, SIGINT, SIGTERM and SIGUSR1 (SLURM's preemption warning) only
set a flag; the loop finishes the current step, runs its hooks, saves a checkpoint and raises
:class:`~vitdet_lib.errors.TrainingInterrupted` (the command line exits with 130). A second
signal aborts at once (``KeyboardInterrupt``). Under ``torchrun`` the flag is agreed on by
all ranks after each step, so every rank stops after the same step.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import torch

from ..errors import TrainingInterrupted
from . import distributed as du

log = logging.getLogger(__name__)

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class HookBase:
    """Something done around the steps of a :class:`TrainLoop` (``self.loop`` is set when
    registered). Every hook runs on every rank; hooks that write check ``info.is_main``."""

    loop: TrainLoop

    def before_train(self) -> None:
        """After a resume, before the first step of this run."""

    def after_step(self, record: dict[str, float]) -> None:
        """After optimizer step ``loop.iteration`` (already counted) with its record."""

    def after_train(self) -> None:
        """After the last step of the schedule (not after a stop or an interrupt)."""

    def close(self) -> None:
        """Always, when the loop is left (release a progress bar, a file)."""


class StopSignals:
    """Turns the stop signals into a flag while active (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:  # a second signal: abort at once
            self.restore()
            raise KeyboardInterrupt(f"{name} after {self.received}: aborted without saving")
        self.received = name
        log.warning("%s: finishing the current step, then saving a checkpoint (send it again "
                    "to abort at once)", name)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self.restore()


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread while the block runs: processes started inside it
    (data loader workers) inherit the mask, so a Ctrl-C or a SLURM signal sent to the whole
    process group reaches only the main process, which stops cleanly; pending signals are
    delivered to the main process when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class TrainLoop:
    """Runs steps until ``total_iters``, calling hooks; see the module docstring.

    Args:
        total_iters: the schedule length in optimizer steps.
        info: this process's place in the job.
    """

    def __init__(self, total_iters: int, info: du.DistInfo) -> None:
        self.total_iters = total_iters
        self.info = info
        self.iteration = 0
        self.hooks: list[HookBase] = []

    def register(self, *hooks: HookBase) -> None:
        for hook in hooks:
            hook.loop = self
            self.hooks.append(hook)

    # -- what a subclass provides -----------------------------------------------------------

    def run_step(self) -> dict[str, float]:
        """One optimizer step; advances ``self.iteration`` by one and returns the record."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the loop holds open (data loader workers) when it ends, however."""

    def save_checkpoint(self) -> Path:
        """Save a resumable checkpoint of the current iteration (collective); its path."""
        raise NotImplementedError

    # -- the loop ---------------------------------------------------------------------------

    def train_loop(self, stop_at: int | None = None) -> str:
        """Run from ``self.iteration`` to the end of the schedule.

        Args:
            stop_at: return (unsaved) once this many steps are done: time-boxed runs, tests.
        Returns:
            ``"finished"`` or ``"stopped"``.
        Raises:
            TrainingInterrupted: a stop signal arrived; the checkpoint was saved.
        """
        with StopSignals() as signals:
            try:
                for hook in self.hooks:
                    hook.before_train()
                while self.iteration < self.total_iters:
                    if stop_at is not None and self.iteration >= stop_at:
                        return "stopped"
                    record = self.run_step()
                    for hook in self.hooks:
                        hook.after_step(record)
                    received = self._agreed_signal(signals)
                    if received is not None:
                        path = self.save_checkpoint()
                        raise TrainingInterrupted(received, self.iteration, path)
                for hook in self.hooks:
                    hook.after_train()
            finally:
                try:
                    for hook in self.hooks:
                        hook.close()
                finally:
                    self.close()
        return "finished"

    def _agreed_signal(self, signals: StopSignals) -> str | None:
        """This rank's signal, or, under torchrun, any rank's (one small collective)."""
        if not self.info.is_distributed:
            return signals.received
        flag = torch.tensor([0.0 if signals.received is None else 1.0], device=self.info.device)
        if du.all_reduce_sum(flag).item() == 0:
            return None
        return signals.received or "a signal on another rank"
