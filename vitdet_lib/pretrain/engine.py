"""Pre-training, shared by the four methods, on the loop fine-tuning runs (``engine/loop.py``).

AdamW (no decay on norms, biases, position tables and tokens), half-period cosine with linear
warmup counted in optimizer steps, AMP, gradient accumulation to ``train.batch_size``, DDP via
``torchrun`` (gloo on CPU), crash-safe checkpoints, exact resume, and a checkpoint on SIGINT /
SIGTERM / SIGUSR1. Output directory (rank 0):

    config.yaml             the complete pre-training config
    log.jsonl               step lines (loss, lr, ...), epoch lines (mean loss, wall time), and
                            the start line with provenance; truncated to the checkpoint on resume
    checkpoint-<E>.pth      the official layout (``{"model": ..}`` / ``{"state_dict": ..}``) after
                            each epoch E of ``train.save_epochs``, plus ``epoch`` and ``config``
    last.pth                the official layout plus everything a resume needs (optimizer,
                            schedule, grad scaler, step, every rank's RNG state)
    tokenizer.pth           BEiT only: the visual tokenizer trained before pre-training
    changes.jsonl           settings changed at a resume (``allow_changes``; ``engine/resume.py``)
"""
from __future__ import annotations

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
from ..engine import resume as rs
from ..engine.hooks import HookBase, WindowLogger
from ..engine.loop import TrainLoop
from ..engine.optim import build_optimizer, param_groups
from ..engine.records import append_jsonl, truncate_jsonl
from ..engine.schedule import WarmupCosineSchedule
from ..engine.step import NonFiniteLossError, StepMachinery, make_grad_scaler, seed_everything
from ..io import provenance, torch_save_atomic, write_text_atomic
from .config import PretrainConfig
from .data import StepSampler, load_pretrain_images
from .methods import PretrainMethod, build_method

LOG_NAME = "log.jsonl"

# a resume never changes what the weights are (the encoder, the method's networks), may change
# logging, checkpoint cadence and device freely, and the rest only with allow_changes
PRETRAIN_RESUME_RULES = rs.ResumeRules(
    refused=("method", "encoder", "supervised.num_classes", "mocov3.dim", "mocov3.mlp_dim",
             "beit.layer_scale_init", "beit.tokenizer", "mae.decoder_embed_dim",
             "mae.decoder_depth", "mae.decoder_num_heads"),
    free=("eval", "train.log_every", "train.checkpoint_every", "train.device",
          "train.save_epochs"),
    guarded=("encoder.drop_path_rate",),
)


def epoch_checkpoint_name(epoch: int) -> str:
    return f"checkpoint-{epoch}.pth"


def pretrain_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of ``engine.optim.param_groups`` (kept for callers of this name)."""
    return param_groups(model.named_parameters(), weight_decay)


class _EpochEnd(HookBase):
    """At each epoch end (and the schedule's): an epoch line (mean loss, wall time,
    throughput) and ``last.pth`` (plus ``checkpoint-<E>.pth`` for E in ``save_epochs``);
    between epoch ends, ``last.pth`` every ``checkpoint_every`` steps."""

    def __init__(self, trainer: Pretrainer) -> None:
        self.trainer = trainer
        self.start = 0.0
        self.losses: list[float] = []  # of this epoch's steps in this run

    def before_train(self) -> None:
        self.start, self.losses = time.perf_counter(), []

    def after_step(self, record: dict[str, float]) -> None:
        tr, t = self.trainer, self.trainer.cfg.train
        spe, step = tr.sampler.steps_per_epoch, tr.iteration
        self.losses.append(record["loss"])
        epoch_end = step % spe == 0
        if epoch_end or step == tr.total_iters:
            wall = time.perf_counter() - self.start
            epoch_no = math.ceil(step / spe)
            tr._log({"type": "epoch", "step": step, "epoch": epoch_no,
                     "loss": sum(self.losses) / len(self.losses),
                     "lr": tr.optimizer.param_groups[0]["lr"], "wall_s": wall,
                     "steps_timed": len(self.losses),
                     "images_per_s": len(self.losses) * t.batch_size / wall})
            tr.save(epoch_no if epoch_end and epoch_no in t.save_epochs else None)
            self.start, self.losses = time.perf_counter(), []
        elif t.checkpoint_every and step % t.checkpoint_every == 0:
            tr.save()


class Pretrainer(TrainLoop):
    """Runs one method's pre-training into ``output_dir``, resuming from ``last.pth`` if there.

    A resume is checked against the config stored in ``last.pth`` before anything is written
    (``engine/resume.py``).

    Args:
        cfg: the run's config.
        output_dir: where records and checkpoints go.
        info: this process's place in the job (default: from the environment).
        images, labels: the training set (default: ``load_pretrain_images(cfg.data)``), so
            tests can pass a few hundred images.
        echo: receives every log record (e.g. ``print``); rank 0 only.
        allow_changes: let a resume continue with changed schedule, optimizer or data settings
            (recorded in ``changes.jsonl``); without it such a resume is refused.
    """

    def __init__(self, cfg: PretrainConfig, output_dir: str | Path, *,
                 info: du.DistInfo | None = None, images: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None,
                 echo: Callable[[dict[str, Any]], None] | None = None,
                 allow_changes: bool = False) -> None:
        t = cfg.train
        self.cfg, self.out = cfg, Path(output_dir)
        info = info or du.init_distributed(t.device)
        self.echo = echo
        # the resume check comes first: a refused resume must leave the directory untouched
        self._found = rs.load_newest([self.out / ckpt.LAST_NAME], map_location=info.device)
        self._changes: dict[str, list[Any]] = {}
        if self._found is not None:
            self._changes = rs.check_resume(self._found[1]["config"], to_dict(cfg),
                                            PRETRAIN_RESUME_RULES, allow_changes=allow_changes,
                                            checkpoint=self._found[0])
        if images is None:
            images, labels = load_pretrain_images(cfg.data, seed=t.seed)
        assert labels is not None
        self.images, self.labels = images, labels
        self.sampler = StepSampler(len(images), batch_size=t.batch_size,
                                   batch_per_device=t.batch_per_device, rank=info.rank,
                                   world_size=info.world_size, seed=t.seed)
        super().__init__(max(1, round(t.epochs * self.sampler.steps_per_epoch)), info)
        warmup = round(t.warmup_epochs * self.sampler.steps_per_epoch)
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self._found is None:  # a fresh start: fresh records
                for name in (LOG_NAME, rs.CHANGES_NAME):
                    (self.out / name).unlink(missing_ok=True)
        du.barrier()

        seed_everything(t.seed)  # the same initial weights on every rank
        self.method: PretrainMethod = build_method(cfg)
        self.method.prepare(images, str(self.out), self._log)
        self.net = self.method.net.to(self.info.device)
        self.optimizer = build_optimizer(self.net, lr=t.lr, weight_decay=t.weight_decay,
                                         betas=t.betas)
        self.schedule = WarmupCosineSchedule(self.optimizer, total_iters=self.total_iters,
                                             warmup_iters=warmup, warmup_factor=t.warmup_factor)
        self.scaler = make_grad_scaler(t.amp, self.info.device)
        self.ddp = du.wrap_model(self.net, self.info)
        self.machinery = StepMachinery(self.ddp, self.optimizer, self.schedule, self.scaler,
                                       t.amp, self.info, t.clip_grad, where=str(self.out))
        spe = self.sampler.steps_per_epoch
        self.register(WindowLogger(t.log_every, lambda it, mean: self._log(
            {**mean, "type": "step", "step": it, "epoch": round(it / spe, 4)})))
        self.register(_EpochEnd(self))

    @property
    def total_steps(self) -> int:
        return self.total_iters

    @property
    def step(self) -> int:
        """Optimizer steps done (the loop's iteration count)."""
        return self.iteration

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
                "scaler": self.scaler.state_dict(), "step": self.iteration, "rng": rng,
                "world_size": self.info.world_size}

    def _official(self) -> dict[str, Any]:
        return {**self.method.official_checkpoint(), "config": to_dict(self.cfg),
                "epoch": self.iteration / self.sampler.steps_per_epoch, "step": self.iteration}

    def save(self, epoch_file: int | None = None) -> Path:
        """Write ``last.pth`` (and ``checkpoint-<epoch_file>.pth``); collective."""
        bad = [n for n, p in self.net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(f"non-finite parameters at step {self.iteration} "
                                     f"({bad[:5]})")
        state = self._train_state()
        if self.info.is_main:
            official = self._official()
            if epoch_file is not None:
                torch_save_atomic(official, self.out / epoch_checkpoint_name(epoch_file))
            torch_save_atomic({**official, **state}, self.out / ckpt.LAST_NAME)
        du.barrier()
        return self.out / ckpt.LAST_NAME

    def save_checkpoint(self) -> Path:
        return self.save()

    def _resume_or_start(self) -> None:
        if self._found is None:
            seed_everything(self.cfg.train.seed + 1 + self.info.rank)  # augmentation stream
            return
        state = self._found[1]
        self._found = None  # the loaded tensors are not kept beyond the resume
        changed = bool(self._changes)
        self.method.load_official_state(state[self.method.checkpoint_key])
        rs.restore_optimization(self.optimizer, self.schedule, self.scaler, state,
                                changed=changed)
        self.iteration = state["step"]
        if state["world_size"] == self.info.world_size:
            ckpt.restore_rng_state(state["rng"][self.info.rank])
        else:  # data order still resumes exactly; augmentation draws cannot
            seed_everything(self.cfg.train.seed + 1000 * self.iteration + self.info.rank)
        if self.info.is_main:
            # the lines of steps after the checkpoint are redone; the tokenizer's are kept
            truncate_jsonl(self.out / LOG_NAME, self.iteration, key="step",
                           types=("start", "step", "epoch"))
            rs.record_changes(self.out, self.iteration, self._changes)

    # ------------------------------------------------------------------ loop

    def run(self, stop_after_steps: int | None = None) -> dict[str, Any]:
        """Train to the end of the schedule, or save and return after ``stop_after_steps``
        optimizer steps in total (a resumable stop: benchmarks, tests, time-boxed runs).

        Raises:
            TrainingInterrupted: a stop signal arrived; ``last.pth`` holds the last step.
        """
        if self.info.is_main:
            write_text_atomic(self.out / "config.yaml",
                              yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        self._resume_or_start()
        self._log({"type": "start", "step": self.iteration, "total_steps": self.total_iters,
                   "steps_per_epoch": self.sampler.steps_per_epoch,
                   "num_images": len(self.images), "accumulation": self.sampler.accumulation,
                   "world_size": self.info.world_size, "threads": torch.get_num_threads(),
                   "provenance": provenance(self.info.device)})
        self.ddp.train()
        if self.train_loop(stop_after_steps) == "stopped":
            self.save()
            return {"status": "stopped", "step": self.iteration}
        return {"status": "finished", "step": self.iteration}

    def run_step(self) -> dict[str, float]:
        micro = self.sampler.micro_batches(self.iteration)
        device = self.info.device

        def fetch(m: int) -> Any:
            return self.method.make_batch(self.images[micro[m]], self.labels[micro[m]], device)

        record = self.machinery.step(self.iteration, self.total_iters, len(micro), fetch,
                                     self._forward)
        self.iteration += 1
        self.method.on_step_end(self.iteration / self.total_iters)
        return record

    def _forward(self, model: nn.Module, batch: Any
                 ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        loss, logs = self.method.loss(model, batch)
        return {"loss": loss}, logs


def pretrain(cfg: PretrainConfig, output_dir: str | Path, *,
             images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
             stop_after_steps: int | None = None,
             echo: Callable[[dict[str, Any]], None] | None = None,
             allow_changes: bool = False) -> dict[str, Any]:
    """Pre-train ``cfg.method`` into ``output_dir`` (resuming if it holds ``last.pth``).

    Returns:
        ``{"status": "finished" | "stopped", "step": ..}``.
    """
    trainer = Pretrainer(cfg, output_dir, images=images, labels=labels, echo=echo,
                         allow_changes=allow_changes)
    return trainer.run(stop_after_steps=stop_after_steps)
