"""Up-front validation of a COCO-format dataset: every problem at once, before training starts.

``CocoDetection`` checks annotations when built (stopping at the first fault) and reads image
files only when a step needs them, so a missing or wrongly sized image used to stop a run late,
after checkpoints were written. :func:`validate_coco` checks the annotations and the header of
every image file (exists, non-empty, identifiable by PIL, size as the json says; no pixels are
decoded, so thousands of images take seconds) and returns all problems; :func:`check_coco`
raises one :class:`CocoDatasetError` listing the first few and counting the rest.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from .coco import (
    CocoDatasetError,
    CocoDetection,
    _check_segmentation,
    _require,
    image_header_problem,
)

SHOWN = 10  # problems listed in an error message; the rest are counted


@dataclass(frozen=True)
class Problem:
    """One fault: the file it is in (annotation json or image) and the entry concerned."""

    file: str
    message: str
    image_id: Any = None
    annotation_id: Any = None

    def __str__(self) -> str:
        ids = [f"image id {self.image_id}"] if self.image_id is not None else []
        ids += [f"annotation id {self.annotation_id}"] if self.annotation_id is not None else []
        return f"{self.file}: {self.message}" + (f" ({', '.join(ids)})" if ids else "")


def validate_coco(images_dir: str | Path, annotations: str | Path, *,
                  invalid_boxes: Literal["raise", "drop"] = "raise", check_files: bool = True,
                  progress: bool | None = None) -> list[Problem]:
    """Every problem of a COCO-format dataset, in file order (empty list: the dataset is fine).

    Args:
        images_dir: directory the images' ``file_name`` entries are relative to.
        annotations: the instances json.
        invalid_boxes: as ``CocoDetection``: ``"raise"`` reports a degenerate or outside box,
            ``"drop"`` accepts it (the dataset will drop the annotation).
        check_files: also check each image file's header (exists, non-empty, size).
        progress: a progress bar over the image files; default: when stderr is a terminal.
    """
    ann_file = Path(annotations)
    data, problem = _read_json(ann_file)
    if data is None:
        return [problem] if problem else []
    src = str(ann_file)
    problems: list[Problem] = []
    images = _check_images_entries(data["images"], src, problems)
    categories = set()
    for i, category in enumerate(data["categories"]):
        if _entry_ok(category, "category", f"categories[{i}]", src, problems):
            categories.add(category["id"])
    if not categories:
        problems.append(Problem(src, "'categories' has no entries"))
    for i, ann in enumerate(data["annotations"]):
        if not _entry_ok(ann, "annotation", f"annotations[{i}]", src, problems):
            continue
        _check_annotation(ann, images, categories, src, invalid_boxes, problems)
    if check_files:
        show = sys.stderr.isatty() if progress is None else progress
        root = Path(images_dir)
        for info in tqdm(list(images.values()), desc=f"checking {root}", unit="img",
                         disable=not show, leave=False):
            path = root / str(info["file_name"])
            fault = image_header_problem(path, info["width"], info["height"])
            if fault is not None:
                problems.append(Problem(str(path), fault, image_id=info["id"]))
    return problems


def check_coco(images_dir: str | Path, annotations: str | Path, **kwargs: Any) -> None:
    """Raise one ``CocoDatasetError`` listing the problems :func:`validate_coco` finds.

    Raises:
        CocoDatasetError: the first ``SHOWN`` problems, one per line, and a count of the rest.
    """
    problems = validate_coco(images_dir, annotations, **kwargs)
    if problems:
        raise CocoDatasetError(format_problems(problems, Path(annotations), Path(images_dir)))


def format_problems(problems: list[Problem], annotations: Path, images_dir: Path) -> str:
    """``<json>: N problem(s) ...`` then the first ``SHOWN``, indented, then what to do."""
    head = f"{annotations}: {len(problems)} problem(s) in this dataset (images in {images_dir}):"
    lines = [head]
    lines += [f"  {p}" for p in problems[:SHOWN]]
    if len(problems) > SHOWN:
        lines.append(f"  ... and {len(problems) - SHOWN} more")
    lines.append("fix or remove these images/annotations, then run again")
    return "\n".join(lines)


def _read_json(ann_file: Path) -> tuple[dict[str, Any] | None, Problem | None]:
    if not ann_file.is_file():
        return None, Problem(str(ann_file), "annotation file not found")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, Problem(str(ann_file), f"not valid JSON ({error})")
    try:
        _require(data, "dataset", str(ann_file))
    except CocoDatasetError as error:
        return None, Problem(str(ann_file), str(error).removeprefix(f"{ann_file}: "))
    if not data["images"]:
        return None, Problem(str(ann_file), "empty dataset, 'images' has no entries")
    return data, None


def _entry_ok(entry: Any, kind: str, where: str, src: str, problems: list[Problem]) -> bool:
    try:
        _require(entry, kind, where)
    except CocoDatasetError as error:
        problems.append(Problem(src, str(error)))
        return False
    return True


def _check_images_entries(entries: list[Any], src: str, problems: list[Problem]
                          ) -> dict[Any, dict[str, Any]]:
    """Image id -> entry, for the entries whose keys, id and size are valid."""
    images: dict[Any, dict[str, Any]] = {}
    for i, image in enumerate(entries):
        if not _entry_ok(image, "image", f"images[{i}]", src, problems):
            continue
        if image["id"] in images:
            problems.append(Problem(src, "duplicate image id", image_id=image["id"]))
            continue
        w, h = image["width"], image["height"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                   for v in (w, h)):
            problems.append(Problem(src, f"width/height must be positive numbers, got "
                                         f"{w!r}/{h!r}", image_id=image["id"]))
            continue
        images[image["id"]] = image
    return images


def _check_annotation(ann: dict[str, Any], images: dict[Any, dict[str, Any]],
                      categories: set[Any], src: str, invalid_boxes: str,
                      problems: list[Problem]) -> None:
    def add(message: str) -> None:
        problems.append(Problem(src, message, image_id=ann["image_id"], annotation_id=ann["id"]))

    if ann["category_id"] not in categories:
        add(f"unknown category id {ann['category_id']}")
    image = images.get(ann["image_id"])
    if image is None:
        add("unknown image id (no valid images[] entry)")
        return
    try:
        where = "annotation"
        if CocoDetection._box_ok(ann["bbox"], image["width"], image["height"], where,
                                 invalid_boxes):
            _check_segmentation(ann["segmentation"], image["height"], image["width"], where)
    except CocoDatasetError as error:
        add(str(error).removeprefix(f"{where}: "))
