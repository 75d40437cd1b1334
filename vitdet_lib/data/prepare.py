"""The dataset files an experiment names: COCO files on disk, or a generated dataset written
into the cache on first use."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import to_dict
from ..experiment import DataConfig, GeneratedKind
from .coco import coco_split_paths
from .fashion import write_fashion_scenes
from .scenes import write_shape_scenes

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
        val = ((Path(data.val_images), Path(data.val_annotations)) if data.val_images
               else (None, None))
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
