"""The two entry points the CLI and the notebooks share: ``train(cfg)`` and ``evaluate(cfg, ckpt)``.

They assemble the pieces an :class:`~vitdet_lib.experiment.ExperimentConfig` describes: the
dataset files (writing a generated dataset on first use), the datasets and loaders, the
detector, and the distributed context (``torchrun`` or a single process).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vitdet_lib.checkpoint import initialize_backbone, load_model_state, read_checkpoint_file
from vitdet_lib.config import ConfigError, to_dict
from vitdet_lib.data import (
    CocoDetection,
    build_loader,
    check_coco,
    eval_transform,
    lsj_transform,
)
from vitdet_lib.data.prepare import DataPaths, generated_dataset_dir, prepare_data
from vitdet_lib.evaluation import evaluate_model
from vitdet_lib.experiment import ExperimentConfig
from vitdet_lib.io import provenance, write_json_atomic
from vitdet_lib.model import build_detector

from . import distributed as du
from .trainer import TrainData, Trainer, seed_everything

log = logging.getLogger(__name__)

# the dataset files live in data/prepare.py; named here for callers of engine.run
__all__ = ["DataPaths", "build_datasets", "evaluate", "generated_dataset_dir", "prepare_data",
           "train"]


def build_datasets(cfg: ExperimentConfig, paths: DataPaths
                   ) -> tuple[CocoDetection, CocoDetection | None]:
    """Training set (LSJ at the detector's input size) and validation set (original images)."""
    size = cfg.model.detector.image_size
    for images, ann_file in ((paths.train_images, paths.train_annotations),
                             (paths.val_images, paths.val_annotations)):
        if images is not None:  # every problem at once, before anything is written
            check_coco(images, ann_file)
    # LSJ pads with the configured mean: padding is then zero after normalisation
    lsj = lsj_transform(size, scale_range=cfg.data.scale_range,
                        pad_value=cfg.model.detector.pixel_mean)
    train_set = CocoDetection(paths.train_images, paths.train_annotations, mode="train",
                              transform=lsj)
    val_set = None
    if paths.val_images is not None and paths.val_annotations is not None:
        val_set = CocoDetection(paths.val_images, paths.val_annotations, mode="eval",
                                transform=eval_transform())
    expected = cfg.model.detector.num_classes
    for name, ds in (("train", train_set), ("val", val_set)):
        if ds is not None and ds.num_categories != expected:
            raise ConfigError(f"model.detector.num_classes={expected} but the {name} set "
                              f"{ds.ann_file} has {ds.num_categories} categories")
    return train_set, val_set


def _eval_fn(cfg: ExperimentConfig, val_set: CocoDetection, info: du.DistInfo):
    def evaluate_fn(model: nn.Module, tag: str) -> dict[str, float]:
        out = Path(cfg.output_dir) / "eval" / tag if cfg.eval.save_predictions else None
        return evaluate_model(model, val_set, info.device, batch_size=cfg.eval.batch_per_device,
                              num_workers=cfg.train.num_workers, output_dir=out,
                              max_images=cfg.eval.max_images)
    return evaluate_fn


@dataclass
class _Session:
    """The distributed context of one call, torn down only if this call created it."""

    info: du.DistInfo
    owns_group: bool


def _open(cfg: ExperimentConfig) -> _Session:
    owns = not dist.is_initialized()
    return _Session(du.init_distributed(cfg.train.device), owns)


def _prepare(cfg: ExperimentConfig, info: du.DistInfo) -> DataPaths:
    with du.main_process_first(info):  # rank 0 writes a generated dataset, the others reuse it
        return prepare_data(cfg.data)


def train(cfg: ExperimentConfig, *, allow_changes: bool = False) -> dict[str, Any]:
    """Train (or resume) the experiment; returns the summary written to ``metrics.json``.

    Runs as one process, or as one rank of a ``torchrun`` job (the environment decides).

    Args:
        allow_changes: a resume may change schedule, optimizer or data settings (recorded in
            ``changes.jsonl``); without it such a resume is refused (``engine/resume.py``).
    Raises:
        TrainingInterrupted: SIGINT/SIGTERM/SIGUSR1; the last step's checkpoint was saved.
    """
    if not cfg.output_dir:
        raise ConfigError("output_dir is not set")
    session = _open(cfg)
    info = session.info
    try:
        train_set, val_set = build_datasets(cfg, _prepare(cfg, info))
        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        model = build_detector(cfg.model)
        # the chosen initialisation; a resumed run then overwrites it from its checkpoint
        report = initialize_backbone(model.backbone.vit, cfg.init)
        if info.is_main:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            write_json_atomic(Path(cfg.output_dir) / "init_report.json", report.to_dict())
            log.info("backbone initialisation:\n%s", report.summary())
        model.to(info.device)
        t = cfg.train

        def make_loader(epoch: int, start_batch: int) -> torch.utils.data.DataLoader:
            return build_loader(train_set, t.batch_per_device, t.num_workers, shuffle=True,
                                seed=t.seed, distributed=info.is_distributed, drop_last=True,
                                epoch=epoch, start_batch=start_batch,
                                pin_memory=info.device.type == "cuda")

        evaluate_fn = _eval_fn(cfg, val_set, info) if val_set is not None else None
        data = TrainData(num_images=len(train_set), make_loader=make_loader, evaluate=evaluate_fn)
        return Trainer(cfg, model, data, info, allow_changes=allow_changes).run()
    finally:
        if session.owns_group:
            du.shutdown()


def _test_set(cfg: ExperimentConfig, paths: DataPaths) -> CocoDetection:
    if paths.test_images is None or paths.test_annotations is None:
        raise ConfigError("evaluation on split=test needs a generated dataset with "
                          "data.generated.num_test > 0")
    test_set = CocoDetection(paths.test_images, paths.test_annotations, mode="eval",
                             transform=eval_transform())
    if test_set.num_categories != cfg.model.detector.num_classes:
        raise ConfigError(f"model.detector.num_classes={cfg.model.detector.num_classes} but the "
                          f"test set {test_set.ann_file} has {test_set.num_categories} categories")
    return test_set


def evaluate(cfg: ExperimentConfig, checkpoint: str | Path, split: str = "val") -> dict[str, Any]:
    """Evaluate a checkpoint (a training checkpoint or a bare state dict) on the val or test set.

    Model selection (periodic evals, the lr/wd/dp grid) uses val; ``split="test"`` reports a
    selected model on the held-out scenes (``data.generated.num_test > 0``), its metrics keyed
    ``test/bbox/AP`` etc. so they can sit beside the val ones in one record.

    Writes ``coco_results.json``, ``metrics.json`` and ``record.json`` (checkpoint, split,
    config, provenance) to ``output_dir/eval_<checkpoint name>/`` (``..._test/`` for the test
    split) and returns the metrics.
    """
    if split not in ("val", "test"):
        raise ConfigError(f"evaluate: split must be 'val' or 'test', got {split!r}")
    session = _open(cfg)
    info = session.info
    try:
        paths = _prepare(cfg, info)
        if split == "test":
            val_set = _test_set(cfg, paths)
        else:
            _, val_set = build_datasets(cfg, paths)
        if val_set is None:
            raise ConfigError("evaluation needs data.val_images and data.val_annotations "
                              "(or a generated dataset with num_val > 0)")
        model = build_detector(cfg.model)
        state = read_checkpoint_file(checkpoint)
        # any key that does not fit is an error (never a weight silently left at its init)
        load_model_state(model, state, checkpoint)
        model.to(info.device)
        suffix = "_test" if split == "test" else ""
        out = Path(cfg.output_dir or ".") / f"eval_{Path(checkpoint).stem}{suffix}"
        metrics = evaluate_model(model, val_set, info.device,
                                 batch_size=cfg.eval.batch_per_device,
                                 num_workers=cfg.train.num_workers, output_dir=out,
                                 max_images=cfg.eval.max_images)
        if split == "test":
            metrics = {f"test/{k}": v for k, v in metrics.items()}
        if info.is_main:
            record = {"checkpoint": str(checkpoint), "iteration": state.get("iteration"),
                      "split": split, "metrics": metrics, "config": to_dict(cfg),
                      "provenance": provenance(info.device)}
            write_json_atomic(out / "record.json", record)
        return metrics
    finally:
        if session.owns_group:
            du.shutdown()
