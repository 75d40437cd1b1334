"""The two entry points the CLI and the notebooks share: ``train(cfg)`` and ``evaluate(cfg, ckpt)``.

They assemble the pieces an :class:`~vitdet_lib.experiment.ExperimentConfig` describes: the
dataset files (writing a generated dataset on first use), the datasets and loaders, the
detector, and the distributed context (``torchrun`` or a single process).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vitdet_lib.checkpoint import initialize_backbone, load_model_state, read_checkpoint_file
from vitdet_lib.config import ConfigError, ModelConfig, to_dict
from vitdet_lib.data import (
    CocoDetection,
    build_loader,
    check_coco,
    coco_split_paths,
    eval_transform,
    lsj_transform,
    write_fashion_scenes,
    write_shape_scenes,
)
from vitdet_lib.evaluation import evaluate_model
from vitdet_lib.experiment import DataConfig, ExperimentConfig, GeneratedKind
from vitdet_lib.io import provenance, write_json_atomic
from vitdet_lib.model import build_detector

from . import distributed as du
from .trainer import TrainData, Trainer, seed_everything

log = logging.getLogger(__name__)

_COMPLETE = "complete.json"  # written last: a generated dataset without it is unfinished


@dataclass(frozen=True)
class DataPaths:
    """COCO-format files of one experiment (val may be absent: training without evaluation;
    test is present only for a generated dataset with ``num_test > 0``)."""

    train_images: Path
    train_annotations: Path
    val_images: Path | None
    val_annotations: Path | None
    test_images: Path | None = None
    test_annotations: Path | None = None


def generated_dataset_dir(data: DataConfig) -> Path:
    assert data.generated is not None
    return Path(data.cache_dir) / data.generated.cache_name


def prepare_data(data: DataConfig) -> DataPaths:
    """The dataset files, writing a generated dataset into the cache first if needed.

    A generated dataset is written to a temporary directory and renamed into place, so a crash
    or a concurrent writer never leaves a half-written dataset under the final name.
    """
    if data.generated is None:
        val = (Path(data.val_images), Path(data.val_annotations)) if data.val_images else (None, None)
        return DataPaths(Path(data.train_images), Path(data.train_annotations), *val)
    gen = data.generated
    root = generated_dataset_dir(data)
    if not (root / _COMPLETE).is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
        try:
            log.info("writing the %s dataset to %s", gen.kind.value, root)
            sizes = {"train": gen.num_train, "val": gen.num_val}
            if gen.num_test > 0:
                sizes["test"] = gen.num_test
            if gen.kind == GeneratedKind.SHAPES:
                for split, count in sizes.items():
                    write_shape_scenes(tmp, count, gen.image_size, gen.seed, split=split)
            else:
                write_fashion_scenes(tmp, sizes, gen.image_size, gen.seed)
            (tmp / _COMPLETE).write_text(json.dumps(to_dict(gen)))
            if not (root / _COMPLETE).is_file():  # else a concurrent writer finished first
                shutil.rmtree(root, ignore_errors=True)  # an unfinished leftover, if any
                try:
                    tmp.rename(root)
                except OSError:
                    if not (root / _COMPLETE).is_file():
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    train, val = coco_split_paths(root, "train"), coco_split_paths(root, "val")
    test = coco_split_paths(root, "test") if gen.num_test > 0 else (None, None)
    return DataPaths(*train, *(val if gen.num_val > 0 else (None, None)), *test)


def effective_model_config(cfg: ExperimentConfig) -> ModelConfig:
    """``cfg.model`` with ``train.drop_path`` applied (the tuning protocol varies it per run)."""
    if cfg.train.drop_path is None:
        return cfg.model
    backbone = dataclasses.replace(cfg.model.backbone, drop_path_rate=cfg.train.drop_path)
    return dataclasses.replace(cfg.model, backbone=backbone)


def build_datasets(cfg: ExperimentConfig, paths: DataPaths
                   ) -> tuple[CocoDetection, CocoDetection | None]:
    """Training set (LSJ at the detector's input size) and validation set (original images)."""
    size = cfg.model.detector.image_size
    for images, ann_file in ((paths.train_images, paths.train_annotations),
                             (paths.val_images, paths.val_annotations)):
        if images is not None:  # every problem at once, before anything is written
            check_coco(images, ann_file)
    train_set = CocoDetection(paths.train_images, paths.train_annotations, mode="train",
                              transform=lsj_transform(size, scale_range=cfg.data.scale_range))
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


def train(cfg: ExperimentConfig) -> dict[str, Any]:
    """Train (or resume) the experiment; returns the summary written to ``metrics.json``.

    Runs as one process, or as one rank of a ``torchrun`` job (the environment decides).
    """
    if not cfg.output_dir:
        raise ConfigError("output_dir is not set")
    session = _open(cfg)
    info = session.info
    try:
        train_set, val_set = build_datasets(cfg, _prepare(cfg, info))
        seed_everything(cfg.train.seed)  # the same initial weights on every rank
        model = build_detector(effective_model_config(cfg))
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
        return Trainer(cfg, model, data, info).run()
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
        model = build_detector(effective_model_config(cfg))
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
