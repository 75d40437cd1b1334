"""The pre-training loop, shared by the four methods; the same machinery as fine-tuning.

AdamW (no decay on norms, biases, position tables and tokens), half-period cosine with linear
warmup counted in optimizer steps, AMP, gradient accumulation to ``train.batch_size``, DDP via
``torchrun`` (gloo on CPU), crash-safe checkpoints and exact resume. Output directory (rank 0):

    config.yaml             the complete pre-training config
    log.jsonl               step lines (loss, lr, ...), epoch lines (mean loss, wall time), and
                            the start line with provenance; truncated to the checkpoint on resume
    checkpoint-<E>.pth      the official layout (``{"model": ..}`` / ``{"state_dict": ..}``) after
                            each epoch E of ``train.save_epochs``, plus ``epoch`` and ``config``
    last.pth                the official layout plus everything a resume needs (optimizer,
                            schedule, grad scaler, step, every rank's RNG state)
    tokenizer.pth           BEiT only: the visual tokenizer trained before pre-training
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..config import to_dict
from ..engine import checkpoint as ckpt
from ..engine import distributed as du
from ..engine.optim import skips_weight_decay
from ..engine.records import append_jsonl
from ..engine.schedule import WarmupCosineSchedule
from ..engine.trainer import NonFiniteLossError, autocast_context, seed_everything
from ..experiment import AmpMode
from ..io import provenance, torch_save_atomic, write_text_atomic
from .config import PretrainConfig
from .data import StepSampler, load_pretrain_images
from .methods import PretrainMethod, build_method

LOG_NAME = "log.jsonl"
# 3-D [1, 1, C] learned tokens: offsets in embedding space, exempt from decay like biases
NO_DECAY_TOKENS = ("cls_token", "mask_token")


def epoch_checkpoint_name(epoch: int) -> str:
    return f"checkpoint-{epoch}.pth"


def pretrain_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: ``engine.optim``'s exemptions plus the class and mask tokens; frozen
    parameters (fixed sin-cos tables, MoCo's momentum encoder) are left out."""
    decay: dict[str, list] = {"params": [], "param_names": []}
    exempt: dict[str, list] = {"params": [], "param_names": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = skips_weight_decay(name, p) or name.split(".")[-1] in NO_DECAY_TOKENS
        group = exempt if skip else decay
        group["params"].append(p)
        group["param_names"].append(name)
    groups = [dict(decay, weight_decay=weight_decay, group="decay"),
              dict(exempt, weight_decay=0.0, group="no_decay")]
    return [g for g in groups if g["params"]]


def _truncate_log(path: Path, step: int) -> None:
    """Drop the training lines of steps after ``step`` (they are redone after a resume)."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        if not ln.strip():
            continue
        rec = json.loads(ln)
        if rec.get("type") in ("start", "step", "epoch") and rec.get("step", 0) > step:
            continue
        keep.append(ln)
    text = "".join(ln + "\n" for ln in keep)
    write_text_atomic(path, text)


class Pretrainer:
    """Runs one method's pre-training into ``output_dir``, resuming from ``last.pth`` if there.

    Args:
        cfg: the run's config.
        output_dir: where records and checkpoints go.
        info: this process's place in the job (default: from the environment).
        images, labels: the training set (default: ``load_pretrain_images(cfg.data)``), so
            tests can pass a few hundred images.
        echo: receives every log record (e.g. ``print``); rank 0 only.
    """

    def __init__(self, cfg: PretrainConfig, output_dir: str | Path, *,
                 info: du.DistInfo | None = None, images: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None,
                 echo: Callable[[dict[str, Any]], None] | None = None) -> None:
        t = cfg.train
        self.cfg, self.out = cfg, Path(output_dir)
        self.info = info or du.init_distributed(t.device)
        self.echo = echo
        if images is None:
            images, labels = load_pretrain_images(cfg.data, seed=t.seed)
        assert labels is not None
        self.images, self.labels = images, labels
        self.sampler = StepSampler(len(images), batch_size=t.batch_size,
                                   batch_per_device=t.batch_per_device, rank=self.info.rank,
                                   world_size=self.info.world_size, seed=t.seed)
        self.total_steps = max(1, round(t.epochs * self.sampler.steps_per_epoch))
        warmup = round(t.warmup_epochs * self.sampler.steps_per_epoch)
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not (self.out / ckpt.LAST_NAME).is_file():  # a fresh start: fresh records
                (self.out / LOG_NAME).unlink(missing_ok=True)
        du.barrier()

        seed_everything(t.seed)  # the same initial weights on every rank
        self.method: PretrainMethod = build_method(cfg)
        self.method.prepare(images, str(self.out), self._log)
        self.net = self.method.net.to(self.info.device)
        self.optimizer = torch.optim.AdamW(pretrain_param_groups(self.net, t.weight_decay),
                                           lr=t.lr, betas=t.betas)
        self.schedule = WarmupCosineSchedule(self.optimizer, total_iters=self.total_steps,
                                             warmup_iters=warmup, warmup_factor=t.warmup_factor)
        use_scaler = t.amp == AmpMode.FP16 and self.info.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.step = 0
        self.ddp = du.wrap_model(self.net, self.info)

    # ------------------------------------------------------------------ records

    def _log(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            append_jsonl(self.out / LOG_NAME, record)
            if self.echo is not None:
                self.echo(record)

    def _train_state(self) -> dict[str, Any]:
        """Collective: every rank's RNG state is gathered."""
        rng = du.all_gather_object(ckpt.capture_rng_state())
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "rng": rng,
                "world_size": self.info.world_size}

    def _official(self) -> dict[str, Any]:
        return {**self.method.official_checkpoint(), "config": to_dict(self.cfg),
                "epoch": self.step / self.sampler.steps_per_epoch, "step": self.step}

    def save(self, epoch_file: int | None = None) -> None:
        """Write ``last.pth`` (and ``checkpoint-<epoch_file>.pth``); collective."""
        bad = [n for n, p in self.net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(f"non-finite parameters at step {self.step} ({bad[:5]})")
        state = self._train_state()
        if self.info.is_main:
            official = self._official()
            if epoch_file is not None:
                torch_save_atomic(official, self.out / epoch_checkpoint_name(epoch_file))
            torch_save_atomic({**official, **state}, self.out / ckpt.LAST_NAME)
        du.barrier()

    def _resume_or_start(self) -> None:
        path = self.out / ckpt.LAST_NAME
        if not path.is_file():
            seed_everything(self.cfg.train.seed + 1 + self.info.rank)  # augmentation stream
            return
        state = ckpt.load_checkpoint(path, map_location=self.info.device)
        self.method.load_official_state(state[self.method.checkpoint_key])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        if state["world_size"] == self.info.world_size:
            ckpt.restore_rng_state(state["rng"][self.info.rank])
        else:  # data order still resumes exactly; augmentation draws cannot
            seed_everything(self.cfg.train.seed + 1000 * self.step + self.info.rank)
        if self.info.is_main:
            _truncate_log(self.out / LOG_NAME, self.step)

    # ------------------------------------------------------------------ loop

    def run(self, stop_after_steps: int | None = None) -> dict[str, Any]:
        """Train to the end of the schedule, or save and return after ``stop_after_steps``
        optimizer steps in total (a resumable stop: benchmarks, tests, time-boxed runs)."""
        if self.info.is_main:
            with open(self.out / "config.yaml", "w") as f:
                yaml.safe_dump(to_dict(self.cfg), f, sort_keys=False)
        self._resume_or_start()
        t, spe = self.cfg.train, self.sampler.steps_per_epoch
        self._log({"type": "start", "step": self.step, "total_steps": self.total_steps,
                   "steps_per_epoch": spe, "num_images": len(self.images),
                   "accumulation": self.sampler.accumulation, "world_size": self.info.world_size,
                   "threads": torch.get_num_threads(), "provenance": provenance(self.info.device)})
        self.ddp.train()
        epoch_start, epoch_losses, window = time.perf_counter(), [], []
        steps_timed = 0
        while self.step < self.total_steps:
            if stop_after_steps is not None and self.step >= stop_after_steps:
                self.save()
                return {"status": "stopped", "step": self.step}
            record = self._train_step()
            steps_timed += 1
            epoch_losses.append(record["loss"])
            window.append(record)
            if self.step % t.log_every == 0 or self.step in (1, self.total_steps):
                line = {k: sum(r[k] for r in window) / len(window) for k in window[-1]}
                line.update(lr=window[-1]["lr"], type="step", step=self.step,
                            epoch=round(self.step / spe, 4))
                self._log(line)
                window = []
            epoch_end = self.step % spe == 0
            if epoch_end or self.step == self.total_steps:
                wall = time.perf_counter() - epoch_start
                epoch_no = math.ceil(self.step / spe)
                self._log({"type": "epoch", "step": self.step, "epoch": epoch_no,
                           "loss": sum(epoch_losses) / len(epoch_losses),
                           "lr": self.optimizer.param_groups[0]["lr"], "wall_s": wall,
                           "steps_timed": steps_timed,
                           "images_per_s": steps_timed * t.batch_size / wall})
                self.save(epoch_no if epoch_end and epoch_no in t.save_epochs else None)
                epoch_start, epoch_losses, steps_timed = time.perf_counter(), [], 0
            elif t.checkpoint_every and self.step % t.checkpoint_every == 0:
                self.save()
        return {"status": "finished", "step": self.step}

    def _train_step(self) -> dict[str, float]:
        t, device = self.cfg.train, self.info.device
        start = time.perf_counter()
        micro = self.sampler.micro_batches(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        extras: dict[str, float] = {}
        for i, idx in enumerate(micro):
            batch = self.method.make_batch(self.images[idx], self.labels[idx], device)
            sync = (self.ddp.no_sync() if self.info.is_distributed and i < len(micro) - 1
                    else contextlib.nullcontext())
            with sync:
                with autocast_context(t.amp, device):
                    loss, logs = self.method.loss(self.ddp, batch)
                self.scaler.scale(loss / len(micro)).backward()
            loss_sum += loss.detach().float()
            for k, v in logs.items():
                extras[k] = extras.get(k, 0.0) + v / len(micro)
        mean = du.all_reduce_sum(loss_sum / len(micro)) / self.info.world_size
        if not math.isfinite(float(mean)):
            raise NonFiniteLossError(f"non-finite loss at step {self.step + 1}; the last good "
                                     f"checkpoint stays in {self.out}")
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        if t.clip_grad is not None and math.isfinite(grad_norm):
            torch.nn.utils.clip_grads_with_norm_(params, t.clip_grad, torch.tensor(grad_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.step += 1
        self.method.on_step_end(self.step / self.total_steps)
        return {"loss": float(mean), "lr": lr, "grad_norm": grad_norm,
                "time": time.perf_counter() - start, **extras}


def pretrain(cfg: PretrainConfig, output_dir: str | Path, *,
             images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
             stop_after_steps: int | None = None,
             echo: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Pre-train ``cfg.method`` into ``output_dir`` (resuming if it holds ``last.pth``).

    Returns:
        ``{"status": "finished" | "stopped", "step": ..}``.
    """
    trainer = Pretrainer(cfg, output_dir, images=images, labels=labels, echo=echo)
    return trainer.run(stop_after_steps=stop_after_steps)
