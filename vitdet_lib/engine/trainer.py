"""Fine-tuning on the shared loop (``loop.py``): accumulation, AMP, logging, evaluation, resume.

One iteration is one optimizer step over ``train.batch_size`` images: every rank runs
``accum = batch_size / (batch_per_device * world_size)`` forward/backward passes and DDP
averages the gradients once, on the last of them. Records written to ``output_dir`` (rank 0):

    config.yaml     the complete experiment config
    metrics.jsonl   one line per ``log_every`` steps: losses, lr, grad norm, times, memory
                    (``max_mem_mb``: CUDA max allocated / CPU peak RSS; ``step_mem_mb``: the
                    first step's own peak, comparable across devices)
    eval.jsonl      one line per evaluation (at the ``eval_at`` fractions of the schedule)
    metrics.json    the summary, written at the end
    changes.jsonl   settings changed at a resume (``--allow-changes``; see ``resume.py``)
    checkpoint_*.pth, last.pth   (see ``checkpoint.py``); a rerun resumes from ``last.pth``,
                    or from the newest periodic checkpoint that loads when it does not

A resumed run reproduces the uninterrupted one: the checkpoint holds the model, optimizer,
schedule, grad scaler, every RNG state (of every rank) and the data position, and evaluation
runs with the RNG state put aside so it cannot perturb training.
"""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitdet_lib.config import ConfigError, to_dict
from vitdet_lib.experiment import ExperimentConfig, save_experiment

from ..io import provenance, write_json_atomic
from . import checkpoint as ckpt
from . import distributed as du
from . import records
from . import resume as rs
from .hooks import PeriodicCheckpoint, PeriodicEvaluation, ProgressBar, WindowLogger
from .loop import TrainLoop, signals_blocked
from .optim import build_optimizer
from .schedule import WarmupCosineSchedule, iterations_for_epochs
from .step import (
    NonFiniteLossError,
    StepMachinery,
    autocast_context,
    make_grad_scaler,
    peak_memory_mb,
    seed_everything,
)

log = logging.getLogger(__name__)

__all__ = ["FINETUNE_RESUME_RULES", "NonFiniteLossError", "TrainData", "Trainer",
           "autocast_context", "peak_memory_mb", "seed_everything"]

# a resume never changes the model or its initialisation, may change these freely, and the
# rest (drop path included: a regulariser, not a shape) with allow_changes (``resume.py``)
FINETUNE_RESUME_RULES = rs.ResumeRules(
    refused=("model", "init"),
    free=("output_dir", "eval", "train.log_every", "train.checkpoint_every",
          "train.keep_checkpoints", "train.num_workers", "train.device", "train.eval_at"),
    guarded=("model.backbone.drop_path_rate",),
)

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


@dataclass
class TrainData:
    """What the loop needs from the data side.

    Args:
        num_images: training images (converts epochs to iterations).
        make_loader: ``(epoch, start_batch) -> this rank's micro-batches of that epoch``,
            beginning at batch ``start_batch``; the same arguments must give the same batches
            (shuffle seeded by the epoch), which is what makes a mid-epoch resume exact.
        evaluate: ``(bare model, tag) -> {"bbox/AP": ..}``, called on every rank (it may
            shard the images and gather, as ``evaluation.evaluate_model`` does) and recorded
            by rank 0; None skips evaluation. ``tag`` names the point (``iter_0000100``).
    """

    num_images: int
    make_loader: Callable[[int, int], Iterable[Batch]]
    evaluate: Callable[[nn.Module, str], dict[str, float]] | None = None


def _to_device(batch: Batch, device: torch.device) -> Batch:
    images, targets = batch
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in t.items()} for t in targets]
    return images, targets


class _MicroBatches:
    """The endless stream of this rank's micro-batches, epoch after epoch, with its position.

    ``position`` is ``(epoch, index of the next batch within it)``. Creating a loader iterator
    may draw from the global torch RNG (a DataLoader's base seed); doing it with the RNG state
    put aside keeps the training stream identical whether an epoch starts fresh or resumes.
    """

    def __init__(self, make_loader: Callable[[int, int], Iterable[Batch]], epoch: int,
                 batch: int) -> None:
        self.make_loader = make_loader
        self.position = (epoch, batch)
        self._it: Iterator[Batch] | None = None

    def next(self) -> Batch:
        for _ in range(2):  # at most one epoch boundary per call
            if self._it is None:
                # loader workers start here: keep the stop signals for the main process
                with torch.random.fork_rng(devices=[]), signals_blocked():
                    self._it = iter(self.make_loader(*self.position))
            try:
                item = next(self._it)
            except StopIteration:
                if self.position[1] == 0:
                    raise RuntimeError(f"the loader gave no batch in epoch {self.position[0]}: "
                                       "fewer training images than one batch per rank") from None
                self._it, self.position = None, (self.position[0] + 1, 0)
                continue
            self.position = (self.position[0], self.position[1] + 1)
            return item
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Shut the loader's workers down now. A schedule that ends mid-epoch leaves them
        waiting for work; with their stop signals blocked, multiprocessing's exit handler
        (terminate, then join) would wait on them forever."""
        it, self._it = self._it, None
        # explicitly, not through the iterator's finaliser: a traceback may still hold it
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _detector_forward(model: nn.Module, batch: Batch
                      ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    images, targets = batch
    return model(images, targets), {}


class Trainer(TrainLoop):
    """Trains ``model`` as ``cfg.train`` says, resuming from ``output_dir`` if it holds a
    checkpoint.

    Args:
        cfg: the experiment; ``cfg.output_dir`` must be set.
        model: the bare model, already on ``info.device`` (wrapped in DDP here when distributed).
        data: loaders and evaluation, see :class:`TrainData`.
        info: this process's place in the job (default: a single process on ``info.device``).
        allow_changes: let a resume continue with changed schedule, optimizer or data settings
            (recorded in ``changes.jsonl``); without it such a resume is refused.
    """

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, data: TrainData,
                 info: du.DistInfo | None = None, *, allow_changes: bool = False) -> None:
        if not cfg.output_dir:
            raise ConfigError("output_dir is not set")
        t = cfg.train
        info = info or du.DistInfo(device=next(model.parameters()).device)
        per_step = t.batch_per_device * info.world_size
        if t.batch_size % per_step:
            raise ConfigError(f"train.batch_size={t.batch_size} is not a multiple of "
                              f"batch_per_device={t.batch_per_device} x world_size="
                              f"{info.world_size}; gradient accumulation needs a whole number")
        total_iters = t.max_iters or iterations_for_epochs(t.epochs, data.num_images,
                                                           t.batch_size)
        if total_iters < 1:
            raise ConfigError(f"the schedule has no iteration ({t.epochs} epochs of "
                              f"{data.num_images} images at batch {t.batch_size})")
        super().__init__(total_iters, info)
        self.cfg, self.data, self.allow_changes = cfg, data, allow_changes
        self.out = Path(cfg.output_dir)
        self.accum = t.batch_size // per_step
        warmup = iterations_for_epochs(t.warmup_epochs, data.num_images, t.batch_size)
        self.eval_iters = sorted({min(total_iters, max(1, math.ceil(f * total_iters)))
                                  for f in t.eval_at})
        self.optimizer = build_optimizer(model, lr=t.lr, weight_decay=t.weight_decay,
                                         betas=t.betas)
        self.schedule = WarmupCosineSchedule(self.optimizer, total_iters=total_iters,
                                             warmup_iters=warmup, warmup_factor=t.warmup_factor)
        autocast_context(t.amp, info.device)  # fails now, not at the first step
        self.scaler = make_grad_scaler(t.amp, info.device)
        self.ddp_model = du.wrap_model(model, info)
        self.model = du.unwrap(self.ddp_model)  # SyncBN conversion may rebuild the root
        self.eval_history: list[dict[str, Any]] = []
        self.train_time_s = 0.0
        self.stream = _MicroBatches(data.make_loader, 0, 0)
        self.machinery = StepMachinery(self.ddp_model, self.optimizer, self.schedule, self.scaler,
                                       t.amp, info, t.clip_grad, where=str(self.out))
        self._saved: tuple[int, Path] | None = None
        self.register(ProgressBar(), WindowLogger(t.log_every, self._write_metrics))
        if data.evaluate is not None:
            self.register(PeriodicEvaluation(self.eval_iters, data.evaluate, self.model,
                                             self.out / "eval.jsonl", self.eval_history,
                                             self._epoch))
        self.register(PeriodicCheckpoint(t.checkpoint_every, self.save_checkpoint))

    @property
    def step_mem_mb(self) -> float | None:
        return self.machinery.step_mem_mb

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint; collective: every rank must call it (RNG states are gathered)."""
        rng = du.all_gather_object(ckpt.capture_rng_state())
        epoch, batch = self.stream.position
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": rng, "data_position": {"epoch": epoch, "batch": batch},
            "iteration": self.iteration, "eval_history": self.eval_history,
            "train_time_s": self.train_time_s, "world_size": self.info.world_size,
            "config": to_dict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any], *, changed: bool = False) -> None:
        """Restore ``state``; ``changed``: the config differs in accepted ways, so the
        configured optimizer settings and schedule length replace the stored ones."""
        self.model.load_state_dict(state["model"])
        rs.restore_optimization(self.optimizer, self.schedule, self.scaler, state,
                                changed=changed)
        self.iteration = state["iteration"]
        self.eval_history[:] = state["eval_history"]  # in place: the eval hook holds the list
        self.train_time_s = state["train_time_s"]
        pos = state["data_position"]
        self.stream = _MicroBatches(self.data.make_loader, pos["epoch"], pos["batch"])
        if state["world_size"] == self.info.world_size:
            ckpt.restore_rng_state(state["rng"][self.info.rank])
        else:  # the data order still resumes exactly; random draws (drop path, LSJ) cannot
            log.warning("resuming with world_size=%d from a checkpoint of world_size=%d: RNG "
                        "streams reseeded", self.info.world_size, state["world_size"])
            seed_everything(self.cfg.train.seed + 1000 * self.iteration + self.info.rank)

    def close(self) -> None:
        self.stream.close()

    def save_checkpoint(self) -> Path:
        """Write the checkpoint of this iteration (once; collective) and return its path."""
        if self._saved is not None and self._saved[0] == self.iteration:
            return self._saved[1]
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never let a diverged model replace the last good checkpoint
            raise NonFiniteLossError(f"non-finite parameters after iteration {self.iteration} "
                                     f"({bad[:5]}); checkpoint not written")
        state = self.state_dict()
        path = self.out / ckpt.checkpoint_name(self.iteration)
        if self.info.is_main:
            ckpt.save_checkpoint(state, self.out, iteration=self.iteration,
                                 keep_last=self.cfg.train.keep_checkpoints)
        du.barrier()
        self._saved = (self.iteration, path)
        return path

    def _resume_or_start(self) -> None:
        """Check a resume against the checkpoint's config, then write ``config.yaml``, then
        load; nothing is written when the resume is refused."""
        found = rs.load_newest(rs.resume_candidates(self.out), map_location="cpu")
        changes: dict[str, list[Any]] = {}
        if found is not None:
            changes = rs.check_resume(found[1]["config"], to_dict(self.cfg),
                                      FINETUNE_RESUME_RULES, allow_changes=self.allow_changes,
                                      checkpoint=found[0])
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_experiment(self.cfg, self.out / "config.yaml")
        du.barrier()
        if found is None:
            # the training stream starts from the seed alone, whatever model building drew
            seed_everything(self.cfg.train.seed + self.info.rank)
            if self.info.is_main:
                for name in ("metrics.jsonl", "eval.jsonl", rs.CHANGES_NAME):
                    (self.out / name).unlink(missing_ok=True)
            return
        path, state = found
        # on CPU: RNG states must stay CPU tensors; weights are copied to their devices
        self.load_state_dict(state, changed=bool(changes))
        if self.info.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)
            rs.record_changes(self.out, self.iteration, changes)
            # records written after the checkpoint belong to steps that will be redone
            for name in ("metrics.jsonl", "eval.jsonl"):
                records.truncate_jsonl(self.out / name, self.iteration)

    # ------------------------------------------------------------------ loop

    def run(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to the end of the schedule (or, for tests, return after step ``stop_at``
        as if killed: nothing past the last periodic checkpoint is saved).

        Returns:
            The summary also written to ``metrics.json``.
        Raises:
            NonFiniteLossError: a loss term or the gradient norm is not finite.
            TrainingInterrupted: a stop signal arrived; a checkpoint of the last step was saved.
            ResumeConflictError: the checkpoint's config differs in a refused way.
        """
        self._resume_or_start()
        self.ddp_model.train()
        if self.train_loop(stop_at) == "stopped":
            return {"stopped_at": self.iteration}
        return self._finish()

    def run_step(self) -> dict[str, float]:
        device = self.info.device
        record = self.machinery.step(
            self.iteration, self.total_iters, self.accum,
            fetch=lambda m: _to_device(self.stream.next(), device), forward=_detector_forward)
        self.iteration += 1
        self.train_time_s += record["time"]
        return record

    def _epoch(self, iteration: int | None = None) -> float:
        it = self.iteration if iteration is None else iteration
        return it * self.cfg.train.batch_size / self.data.num_images

    def _write_metrics(self, iteration: int, mean: dict[str, float]) -> None:
        line: dict[str, Any] = {"iter": iteration, "epoch": round(self._epoch(iteration), 6),
                                **mean, "max_mem_mb": peak_memory_mb(self.info.device),
                                "step_mem_mb": self.step_mem_mb}
        records.append_jsonl(self.out / "metrics.jsonl", line)
        if not sys.stderr.isatty():
            log.info("iter %d/%d loss %.4f lr %.3g grad_norm %.3g %.3fs/it", iteration,
                     self.total_iters, line["loss"], line["lr"], line["grad_norm"], line["time"])

    def _finish(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "status": "finished", "iterations": self.iteration, "epochs": self._epoch(),
            "effective_batch": self.cfg.train.batch_size, "accumulation": self.accum,
            "world_size": self.info.world_size, "train_time_s": self.train_time_s,
            "time_per_iter_s": self.train_time_s / max(self.iteration, 1),
            "max_mem_mb": peak_memory_mb(self.info.device), "step_mem_mb": self.step_mem_mb,
            "final_eval": self.eval_history[-1] if self.eval_history else None,
            "eval_history": self.eval_history, "config": to_dict(self.cfg),
            "provenance": provenance(self.info.device),
        }
        if self.info.is_main:
            write_json_atomic(self.out / "metrics.json", summary)
        du.barrier()
        return summary
