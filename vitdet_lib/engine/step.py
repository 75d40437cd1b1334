"""One optimizer step, shared by fine-tuning and pre-training.

A step is ``accum`` micro-batches of forward and backward (DDP all-reduces the gradients once,
on the last of them), a divergence check on the loss terms averaged over micro-batches and
ranks, then unscale, clip, optimizer, grad scaler and lr schedule. What differs between kinds
of training (where a micro-batch comes from, what the loss is) enters as two callables.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from ..experiment import AmpMode
from ..profiling import LiveMemoryTracker
from . import distributed as du
from .schedule import WarmupCosineSchedule

# (the model as trained, maybe DDP-wrapped; one micro-batch) -> (loss terms, scalars to log);
# the terms are summed for backward, each is logged and checked for divergence
ForwardFn = Callable[[nn.Module, Any], tuple[dict[str, torch.Tensor], dict[str, float]]]


class NonFiniteLossError(RuntimeError):
    """Training diverged; the message names the iteration and the loss terms."""


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


def make_grad_scaler(amp: AmpMode, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA; a disabled (pass-through) scaler otherwise."""
    return torch.amp.GradScaler("cuda", enabled=amp == AmpMode.FP16 and device.type == "cuda")


@dataclass
class StepMachinery:
    """What every optimizer step uses, whatever is being trained.

    Args:
        model: the model the forward pass runs (the DDP wrapper when distributed).
        optimizer, schedule, scaler: stepped once per optimizer step, in that order.
        amp: autocast mode of the forward pass.
        info: this process's place in the job (device, ranks).
        clip_grad: max total gradient norm (None: no clipping; the norm is logged anyway).
        where: named in divergence errors ("the last good checkpoint stays in <where>").
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosineSchedule
    scaler: torch.amp.GradScaler
    amp: AmpMode
    info: du.DistInfo
    clip_grad: float | None
    where: str
    step_mem_mb: float | None = None  # measured on this process's first step

    def step(self, iteration: int, total: int, accum: int, fetch: Callable[[int], Any],
             forward: ForwardFn) -> dict[str, float]:
        """Optimizer step number ``iteration + 1`` of ``total``.

        Args:
            accum: micro-batches per step on this rank.
            fetch: ``m -> micro-batch m`` of this step (its time is logged as ``data_time``).
            forward: see :data:`ForwardFn`.
        Returns:
            The step's record: each loss term and ``loss`` (their sum), averaged over
            micro-batches and ranks; the logged scalars (averaged over micro-batches);
            ``lr`` (the one used), ``grad_norm`` (before clipping), ``time``, ``data_time``.
        Raises:
            NonFiniteLossError: a loss term or the gradient norm is not finite.
        """
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self._step_memory():
            names, sums, extras, data_time = self._forward_backward(accum, fetch, forward)
        # one collective for the log values and the divergence check of every rank
        mean = du.all_reduce_sum(sums / accum) / self.info.world_size
        values = mean.tolist()
        bad = [n for n, v in zip(names, values) if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at iteration {iteration + 1} (of {total}): "
                + ", ".join(f"{n}={v}" for n, v in zip(names, values) if n in bad)
                + f"; stopped, the last good checkpoint stays in {self.where}")
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])  # logged before clipping
        grad_norm = norm.item()
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise NonFiniteLossError(f"non-finite gradient norm at iteration {iteration + 1}; "
                                     f"stopped, the last good checkpoint stays in {self.where}")
        if self.clip_grad is not None and math.isfinite(grad_norm):
            torch.nn.utils.clip_grads_with_norm_(params, self.clip_grad, norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)  # skipped by the scaler on fp16 overflow
        self.scaler.update()
        self.schedule.step()
        record = dict(zip(names, values))
        record.update(loss=float(mean.sum()), lr=lr, grad_norm=grad_norm,
                      time=time.perf_counter() - start, data_time=data_time, **extras)
        return record

    def _forward_backward(self, accum: int, fetch: Callable[[int], Any], forward: ForwardFn
                          ) -> tuple[list[str], torch.Tensor, dict[str, float], float]:
        """-> (loss names, per-term loss sums over the micro-batches [len(names)], logged
        scalars averaged over the micro-batches, seconds spent fetching micro-batches)."""
        names: list[str] | None = None
        sums: torch.Tensor | None = None
        extras: dict[str, float] = {}
        data_time = 0.0
        for m in range(accum):
            t0 = time.perf_counter()
            batch = fetch(m)
            data_time += time.perf_counter() - t0
            # gradients are all-reduced once per step, on the last micro-batch
            sync = (self.model.no_sync() if self.info.is_distributed and m < accum - 1
                    else contextlib.nullcontext())
            with sync:
                with autocast_context(self.amp, self.info.device):
                    losses, logs = forward(self.model, batch)
                names = names or sorted(losses)
                values = torch.stack([losses[k].detach().float() for k in names])
                sums = values if sums is None else sums + values
                total = sum(losses[k] for k in names)
                self.scaler.scale(total / accum).backward()
            for k, v in logs.items():
                extras[k] = extras.get(k, 0.0) + v / accum
        assert names is not None and sums is not None
        return names, sums, extras, data_time

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


def peak_memory_mb(device: torch.device) -> float | None:
    """CUDA: max allocated by tensors; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
