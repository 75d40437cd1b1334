"""Check every input of a study before anything runs, and list all problems at once.

A study that fails after six GPU-hours because the fourth checkpoint path has a typo wastes the
six hours; this module finds the typo first. Each check is memoised (a COCO file used by forty
runs is parsed once) and each problem names the runs it blocks.

Checked: params files parse; COCO folders and files exist and pass the dataset validator
(``data.validate.validate_coco``; image, annotation and category counts; ``num_classes``
equals the category count); the image files they reference exist (a deterministic sample), or
with ``full`` every image header is checked (exists, readable, size as the json says); every
checkpoint file loads through its converter into the run's backbone (checkpoints a pre-training run
of the profile writes are "produced by run X", not checked); output folders are writable; the
launcher has the devices it asks for on this machine.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitdet_lib.config import ConfigError, to_dict

SAMPLED_IMAGES = 200  # image files checked to exist per annotation file without ``full``
GENERATED_CLASSES = {"shapes": 4, "fashion": 10}  # scenes.SHAPE_CLASSES, FASHION_MNIST_CLASSES


@dataclass
class Problems:
    """Problem text -> the runs it blocks, in the order first found."""

    items: dict[str, list[str]] = field(default_factory=dict)

    def add(self, text: str, run: str | None = None) -> None:
        runs = self.items.setdefault(text, [])
        if run and run not in runs:
            runs.append(run)

    def lines(self, max_runs: int = 4) -> list[str]:
        out = []
        for text, runs in self.items.items():
            if runs:
                more = f", +{len(runs) - max_runs} more" if len(runs) > max_runs else ""
                text = f"{text} (runs: {', '.join(runs[:max_runs])}{more})"
            out.append(text)
        return out

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class DataInfo:
    """What a dataset split holds (``None`` counts: not readable)."""

    source: str
    images: int | None = None
    annotations: int | None = None
    categories: int | None = None
    checked_files: int = 0


def _short(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__


class Validator:
    """Memoised checks; ``problems`` collects what they find."""

    def __init__(self, *, full: bool = False) -> None:
        self.full = full
        self.problems = Problems()
        self.data: dict[str, DataInfo] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self._ckpt_memo: dict[str, str | None] = {}
        self._coco_memo: dict[tuple[str, str], tuple[DataInfo, list[str]]] = {}

    # ------------------------------------------------------------------ data

    def coco_split(self, images: str, annotations: str) -> tuple[DataInfo, list[str]]:
        """Counts of one COCO split and its problems (memoised per pair of paths)."""
        key = (images, annotations)
        if key in self._coco_memo:
            return self._coco_memo[key]
        info, problems = DataInfo(annotations), []
        if not Path(images).is_dir():
            problems.append(f"image folder {images} not found")
        if not Path(annotations).is_file():
            problems.append(f"annotation file {annotations} not found")
        else:
            try:
                data = json.loads(Path(annotations).read_text())
                entries = data["images"]
                info.images, info.annotations = len(entries), len(data["annotations"])
                info.categories = len(data["categories"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                problems.append(f"annotation file {annotations} does not parse as COCO: "
                                f"{_short(err)}")
                entries = []
            if entries:
                problems += self._coco_problems(images, annotations, entries, info)
        self._coco_memo[key] = (info, problems)
        self.data[annotations] = info
        return info, problems

    def _coco_problems(self, images: str, annotations: str, entries: list[dict[str, Any]],
                       info: DataInfo) -> list[str]:
        """The dataset validator's findings (annotations; with ``full``, every image header
        too), then, without ``full``, a sample of image files checked to exist."""
        from vitdet_lib.data.validate import validate_coco

        found = validate_coco(images, annotations, check_files=self.full and Path(images).is_dir(),
                              progress=False)
        out = []
        if found:
            shown = "; ".join(str(p) for p in found[:3])
            out.append(f"{len(found)} problem(s) in {annotations}"
                       f"{' and its images' if self.full else ''}, e.g. {shown}")
        if self.full:
            info.checked_files = len(entries) if Path(images).is_dir() else 0
        elif Path(images).is_dir():
            missing, info.checked_files = self._missing_images(images, entries)
            if missing:
                out.append(f"{len(missing)} image file(s) of {annotations} missing in {images} "
                           f"(checked a sample of {info.checked_files}), e.g. {missing[:3]}")
        return out

    def _missing_images(self, folder: str, entries: list[dict[str, Any]]) -> tuple[list[str], int]:
        names = [str(e.get("file_name", "")) for e in entries]
        if not self.full and len(names) > SAMPLED_IMAGES:  # evenly spaced, deterministic
            step = len(names) / SAMPLED_IMAGES
            names = [names[int(i * step)] for i in range(SAMPLED_IMAGES)]
        return [n for n in names if not (Path(folder) / n).is_file()], len(names)

    def experiment_data(self, cfg: Any, run: str) -> int | None:
        """Check the data of experiment ``cfg`` for ``run``; the training image count."""
        d, num_classes = cfg.data, cfg.model.detector.num_classes
        if d.generated is not None:
            kind = d.generated.kind.value
            classes = GENERATED_CLASSES[kind]
            self.data.setdefault(f"generated:{d.generated.cache_name}", DataInfo(
                f"generated {kind} scenes (written on first use into {d.cache_dir})",
                d.generated.num_train, None, classes))
            if classes != num_classes:
                self.problems.add(f"model.detector.num_classes={num_classes}, but generated "
                                  f"{kind} scenes have {classes} categories", run)
            return d.generated.num_train
        train = None
        for split, images, ann in (("train", d.train_images, d.train_annotations),
                                   ("val", d.val_images, d.val_annotations)):
            if images is None:
                continue
            info, problems = self.coco_split(images, ann)
            for p in problems:
                self.problems.add(f"data.{split}: {p}", run)
            if info.categories is not None and info.categories != num_classes:
                self.problems.add(f"model.detector.num_classes={num_classes}, but {ann} has "
                                  f"{info.categories} categories", run)
            if split == "train":
                train = info.images
        return train

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, cfg: Any, run: str) -> None:
        """Load ``cfg.init`` through its converter into the run's backbone (memoised)."""
        from vitdet_lib.checkpoint import initialize_backbone
        from vitdet_lib.checkpoint.report import CheckpointError
        from vitdet_lib.model.vit import ViT

        path = cfg.init.checkpoint
        if not path:
            return
        if not Path(path).is_file():
            self.problems.add(f"checkpoint {path} not found (init.kind={cfg.init.kind.value})",
                              run)
            return
        model = cfg.model
        key = json.dumps([to_dict(cfg.init), to_dict(model.backbone),
                          model.detector.image_size], sort_keys=True, default=str)
        if key not in self._ckpt_memo:
            problem = None
            try:
                torch.manual_seed(0)
                vit = ViT(model.backbone, img_size=model.detector.image_size)
                report = initialize_backbone(vit, cfg.init)
                self.checkpoints[path] = {"layout": report.layout, "kind": report.kind,
                                          "loaded": len(report.loaded),
                                          "dropped": len(report.dropped),
                                          "missing": len(report.missing)}
            except (CheckpointError, ConfigError, OSError, RuntimeError) as err:
                problem = f"checkpoint {path} does not load as init.kind=" \
                          f"{cfg.init.kind.value}: {_short(err)}"
            self._ckpt_memo[key] = problem
        if self._ckpt_memo[key]:
            self.problems.add(self._ckpt_memo[key], run)

    # ------------------------------------------------------------------ outputs, devices

    def writable(self, folder: str | Path, what: str) -> None:
        """``folder`` exists and is writable, or can be created (nothing is created here)."""
        p = Path(folder).resolve()
        while not p.exists() and p != p.parent:
            p = p.parent
        if not (p.is_dir() and os.access(p, os.W_OK | os.X_OK)):
            self.problems.add(f"{what} {folder} is not writable ({p} is not a writable folder)")

    def launcher(self, launcher: Any, train_device: str) -> int:
        """The number of devices a run gets; a problem when this machine lacks them."""
        kind = getattr(launcher.kind, "value", launcher.kind)
        if kind == "slurm":  # the cluster allocates them; nothing to check here
            return int(getattr(launcher, "nodes", 1)) * int(getattr(launcher, "gpus_per_node", 1))
        if kind != "torchrun":
            return 1
        per_node = int(launcher.nproc_per_node)
        gpus = torch.cuda.device_count()
        wants_gpu = train_device == "cuda" or (train_device == "auto" and per_node > 1)
        if wants_gpu and gpus < per_node:
            self.problems.add(
                f"launcher torchrun: nproc_per_node={per_node} needs {per_node} CUDA devices per "
                f"node, this machine has {gpus} (lower nproc_per_node, or run on the cluster "
                f"with launcher kind slurm)")
        return per_node * int(launcher.nnodes)
