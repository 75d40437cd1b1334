"""The training loop: accumulation to the effective batch, AMP, logging, evaluation, resume.

One iteration is one optimizer step over ``train.batch_size`` images: every rank runs
``accum = batch_size / (batch_per_device * world_size)`` forward/backward passes and DDP
averages the gradients once, on the last of them. Records written to ``output_dir`` (rank 0):

    config.yaml     the complete experiment config
    metrics.jsonl   one line per ``log_every`` steps: losses, lr, grad norm, times, memory
                    (``max_mem_mb``: CUDA max allocated / CPU peak RSS; ``step_mem_mb``: the
                    first step's own peak, comparable across devices)
    eval.jsonl      one line per evaluation (at the ``eval_at`` fractions of the schedule)
    metrics.json    the summary, written at the end
    checkpoint_*.pth, last.pth   (see ``checkpoint.py``); a rerun resumes from ``last.pth``

A resumed run reproduces the uninterrupted one: the checkpoint holds the model, optimizer,
schedule, grad scaler, every RNG state (of every rank) and the data position, and evaluation
runs with the RNG state put aside so it cannot perturb training.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vitdet_lib.config import ConfigError, to_dict
from vitdet_lib.experiment import AmpMode, ExperimentConfig, save_experiment
from vitdet_lib.profiling import LiveMemoryTracker

from ..io import provenance, write_json_atomic
from . import checkpoint as ckpt
from . import distributed as du
from . import records
from .optim import build_optimizer
from .schedule import WarmupCosineSchedule, iterations_for_epochs

log = logging.getLogger(__name__)

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


class NonFiniteLossError(RuntimeError):
    """Training diverged; the message names the iteration and the loss terms."""


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(mode: AmpMode, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast region of the forward pass for ``train.amp``."""
    if mode == AmpMode.OFF:
        return contextlib.nullcontext()
    if mode == AmpMode.FP16 and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; use bf16 or off on CPU")
    dtype = torch.bfloat16 if mode == AmpMode.BF16 else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def peak_memory_mb(device: torch.device) -> float | None:
    """CUDA: max allocated by tensors; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
                with torch.random.fork_rng(devices=[]):
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


class Trainer:
    """Trains ``model`` as ``cfg.train`` says, resuming from ``output_dir/last.pth`` if present.

    Args:
        cfg: the experiment; ``cfg.output_dir`` must be set.
        model: the bare model, already on ``info.device`` (wrapped in DDP here when distributed).
        data: loaders and evaluation, see :class:`TrainData`.
        info: this process's place in the job (default: a single process on ``info.device``).
    """

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, data: TrainData,
                 info: du.DistInfo | None = None) -> None:
        if not cfg.output_dir:
            raise ConfigError("output_dir is not set")
        t = cfg.train
        self.cfg, self.data = cfg, data
        self.info = info or du.DistInfo(device=next(model.parameters()).device)
        self.out = Path(cfg.output_dir)
        per_step = t.batch_per_device * self.info.world_size
        if t.batch_size % per_step:
            raise ConfigError(f"train.batch_size={t.batch_size} is not a multiple of "
                              f"batch_per_device={t.batch_per_device} x world_size="
                              f"{self.info.world_size}; gradient accumulation needs a whole number")
        self.accum = t.batch_size // per_step
        self.total_iters = t.max_iters or iterations_for_epochs(t.epochs, data.num_images,
                                                                t.batch_size)
        if self.total_iters < 1:
            raise ConfigError(f"the schedule has no iteration ({t.epochs} epochs of "
                              f"{data.num_images} images at batch {t.batch_size})")
        warmup = iterations_for_epochs(t.warmup_epochs, data.num_images, t.batch_size)
        self.eval_iters = sorted({min(self.total_iters, max(1, math.ceil(f * self.total_iters)))
                                  for f in t.eval_at})
        self.model = model
        self.optimizer = build_optimizer(model, lr=t.lr, weight_decay=t.weight_decay,
                                         betas=t.betas)
        self.schedule = WarmupCosineSchedule(self.optimizer, total_iters=self.total_iters,
                                             warmup_iters=warmup, warmup_factor=t.warmup_factor)
        autocast_context(t.amp, self.info.device)  # fails now, not at the first step
        use_scaler = t.amp == AmpMode.FP16 and self.info.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.ddp_model = du.wrap_model(model, self.info)
        self.model = du.unwrap(self.ddp_model)  # SyncBN conversion may rebuild the root
        self.iteration = 0
        self.eval_history: list[dict[str, Any]] = []
        self.train_time_s = 0.0
        self.step_mem_mb: float | None = None  # measured on this process's first step
        self.stream = _MicroBatches(data.make_loader, 0, 0)

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
        self.eval_history = list(state["eval_history"])
        self.train_time_s = state["train_time_s"]
        pos = state["data_position"]
        self.stream = _MicroBatches(self.data.make_loader, pos["epoch"], pos["batch"])
        if state["world_size"] == self.info.world_size:
            ckpt.restore_rng_state(state["rng"][self.info.rank])
        else:  # the data order still resumes exactly; random draws (drop path, LSJ) cannot
            log.warning("resuming with world_size=%d from a checkpoint of world_size=%d: RNG "
                        "streams reseeded", self.info.world_size, state["world_size"])
            seed_everything(self.cfg.train.seed + 1000 * self.iteration + self.info.rank)

    def _save(self) -> None:
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # never let a diverged model replace the last good checkpoint
            raise NonFiniteLossError(f"non-finite parameters after iteration {self.iteration} "
                                     f"({bad[:5]}); checkpoint not written")
        state = self.state_dict()
        if self.info.is_main:
            ckpt.save_checkpoint(state, self.out, iteration=self.iteration,
                                 keep_last=self.cfg.train.keep_checkpoints)
        du.barrier()

    def _resume_or_start(self) -> None:
        path = ckpt.last_checkpoint(self.out)
        if path is None:
            # the training stream starts from the seed alone, whatever model building drew
            seed_everything(self.cfg.train.seed + self.info.rank)
            if self.info.is_main:
                for name in ("metrics.jsonl", "eval.jsonl"):
                    (self.out / name).unlink(missing_ok=True)
            return
        # on CPU: RNG states must stay CPU tensors; weights are copied to their devices
        self.load_state_dict(ckpt.load_checkpoint(path, map_location="cpu"))
        if self.info.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)
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
        """
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_experiment(self.cfg, self.out / "config.yaml")
        du.barrier()
        self._resume_or_start()
        self.ddp_model.train()
        bar = tqdm(total=self.total_iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                   disable=not (self.info.is_main and sys.stderr.isatty()))
        window: list[dict[str, float]] = []
        try:
            while self.iteration < self.total_iters:
                record = self._step()
                window.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}")
                t = self.cfg.train
                if (self.iteration % t.log_every == 0 or self.iteration == self.total_iters
                        or self.iteration == 1):
                    self._log(window)
                    window = []
                if self.iteration in self.eval_iters:
                    self._evaluate()
                if self.iteration % t.checkpoint_every == 0 or self.iteration == self.total_iters:
                    self._save()
                if stop_at is not None and self.iteration >= stop_at:
                    return {"stopped_at": self.iteration}
        finally:
            bar.close()
        return self._finish()

    def _step(self) -> dict[str, float]:
        """One optimizer step over ``accum`` micro-batches; returns this step's record."""
        t = self.cfg.train
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self._step_memory():
            names, sums, data_time = self._forward_backward()
        # one collective for the log values and the divergence check of every rank
        mean = du.all_reduce_sum(sums / self.accum) / self.info.world_size
        bad = [n for n, v in zip(names, mean.tolist()) if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at iteration {self.iteration + 1} (of {self.total_iters}): "
                + ", ".join(f"{n}={v}" for n, v in zip(names, mean.tolist()) if n in bad)
                + f"; stopped, the last good checkpoint stays in {self.out}")
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads)  # logged before clipping
        grad_norm = norm.item()
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise NonFiniteLossError(f"non-finite gradient norm at iteration {self.iteration + 1}"
                                     f"; stopped, the last good checkpoint stays in {self.out}")
        if t.clip_grad is not None and math.isfinite(grad_norm):
            torch.nn.utils.clip_grads_with_norm_(params, t.clip_grad, norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)  # skipped by the scaler on fp16 overflow
        self.scaler.update()
        self.schedule.step()
        self.iteration += 1
        step_time = time.perf_counter() - start
        self.train_time_s += step_time
        record = {n: v for n, v in zip(names, mean.tolist())}
        record.update(loss=float(mean.sum()), lr=lr, grad_norm=grad_norm, time=step_time,
                      data_time=data_time)
        return record

    def _forward_backward(self) -> tuple[list[str], torch.Tensor, float]:
        """``accum`` micro-batches' forward and backward -> (loss names, per-term loss sums over
        the micro-batches, seconds spent waiting for data)."""
        t = self.cfg.train
        device = self.info.device
        data_time = 0.0
        names: list[str] | None = None
        sums: torch.Tensor | None = None
        for m in range(self.accum):
            t0 = time.perf_counter()
            images, targets = _to_device(self.stream.next(), device)
            data_time += time.perf_counter() - t0
            # gradients are all-reduced once per step, on the last micro-batch
            sync = (self.ddp_model.no_sync() if self.info.is_distributed and m < self.accum - 1
                    else contextlib.nullcontext())
            with sync:
                with autocast_context(t.amp, device):
                    losses = self.ddp_model(images, targets)
                names = names or sorted(losses)
                values = torch.stack([losses[k].detach().float() for k in names])
                sums = values if sums is None else sums + values
                total = sum(losses[k] for k in names)
                self.scaler.scale(total / self.accum).backward()
        assert names is not None and sums is not None
        return names, sums, data_time

    @contextlib.contextmanager
    def _step_memory(self) -> Iterator[None]:
        """On the first step, measure the step's own peak memory (activations, gradients,
        temporaries; weights and optimizer state excluded): CUDA's allocator statistics, or the
        live-tensor tracker on CPU, where the process RSS would mostly show everything else."""
        if self.step_mem_mb is not None:
            yield
            return
        device = self.info.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            yield
            self.step_mem_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            return
        tracker = LiveMemoryTracker()
        with tracker:
            yield
        self.step_mem_mb = tracker.peak / 2**20

    def _epoch(self) -> float:
        return self.iteration * self.cfg.train.batch_size / self.data.num_images

    def _log(self, window: list[dict[str, float]]) -> None:
        if not self.info.is_main or not window:
            return
        line: dict[str, Any] = {"iter": self.iteration, "epoch": round(self._epoch(), 6)}
        for key in window[-1]:
            values = [r[key] for r in window]
            # lr is the schedule's value at the last step; everything else averages the window
            line[key] = values[-1] if key == "lr" else sum(values) / len(values)
        line["max_mem_mb"] = peak_memory_mb(self.info.device)
        line["step_mem_mb"] = self.step_mem_mb
        records.append_jsonl(self.out / "metrics.jsonl", line)
        if not sys.stderr.isatty():
            log.info("iter %d/%d loss %.4f lr %.3g grad_norm %.3g %.3fs/it", self.iteration,
                     self.total_iters, line["loss"], line["lr"], line["grad_norm"], line["time"])

    def _evaluate(self) -> None:
        """Evaluate (every rank) with the training RNG state put aside; rank 0 records."""
        if self.data.evaluate is not None:
            py_state, np_state = random.getstate(), np.random.get_state()
            devices = [self.info.device] if self.info.device.type == "cuda" else []
            start = time.perf_counter()
            self.model.eval()
            try:
                with torch.random.fork_rng(devices=devices), torch.no_grad():
                    metrics = self.data.evaluate(self.model, f"iter_{self.iteration:07d}")
            finally:
                self.model.train()
                random.setstate(py_state)
                np.random.set_state(np_state)
            record = {"iter": self.iteration, "epoch": round(self._epoch(), 6),
                      "fraction": self.iteration / self.total_iters, **metrics,
                      "eval_time_s": time.perf_counter() - start}
            self.eval_history.append(record)
            if self.info.is_main:
                records.append_jsonl(self.out / "eval.jsonl", record)
        du.barrier()

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

