"""COCO box and mask evaluation with pycocotools, as the paper reports it (AP, AP50, AP75,
APs, APm, APl on val2017).

Metrics are floats in percent under keys ``"{iou_type}/{name}"`` (``bbox/AP``, ``segm/AP50``...).
A metric that is undefined because the ground truth has no instance in its range (e.g. no large
objects) is NaN, not pycocotools' -1.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from .data.loader import build_loader
from .io import write_json_atomic

METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
log = logging.getLogger(__name__)


def predictions_to_coco(
    outputs: Sequence[dict[str, torch.Tensor]],
    image_ids: Sequence[int],
    contiguous_to_cat_id: dict[int, int],
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """Detector outputs -> COCO results entries.

    Args:
        outputs: per image ``boxes`` [M, 4] XYXY in original-image pixels, ``labels`` [M]
            contiguous 1..K, ``scores`` [M], optionally ``masks`` [M, 1, H, W] probabilities
            (original image size).
        image_ids: COCO image id of each output.
        contiguous_to_cat_id: label -> COCO category id (``CocoDetection.label_to_cat_id``).
        mask_threshold: probability above which a pixel belongs to the instance.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score",
        "segmentation": {"size", "counts": str}}, ...]`` (no segmentation without masks).
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = output["scores"].detach().float().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        rles: list[dict[str, Any]] | None = None
        if "masks" in output:
            binary = (
                (output["masks"].detach()[:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
            )
            # pycocotools encodes [H, W, M] Fortran-order arrays in one call.
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
            for rle in rles:
                rle["counts"] = rle["counts"].decode("utf-8")  # bytes are not JSON
        for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
            entry: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(contiguous_to_cat_id[int(label)]),
                "bbox": [round(v, 3) for v in box],
                "score": float(score),
            }
            if rles is not None:
                entry["segmentation"] = rles[i]
            results.append(entry)
    return results


def save_coco_results(path: str | Path, results: list[dict[str, Any]]) -> Path:
    """Write results json atomically (temporary file + ``os.replace``, so a reader never sees
    half a file); returns ``path``."""
    return write_json_atomic(path, results, indent=None)


def _load_gt(gt: str | Path | COCO) -> COCO:
    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(gt))


def coco_evaluate(
    gt: str | Path | COCO,
    results: list[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    *,
    image_ids: Iterable[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Run COCOeval for each IoU type.

    Args:
        gt: ground-truth json path or a loaded ``COCO`` (e.g. ``CocoDetection.coco``).
        results: entries as from ``predictions_to_coco``.
        iou_types: ``"bbox"`` and/or ``"segm"``.
        image_ids: evaluate on these images only (default: every image of ``gt``); images
            without results count as missed, so pass the evaluated subset here.
        verbose: let pycocotools print its progress and summary table.

    Returns:
        ``{"bbox/AP": ..., "segm/APl": ...}`` in percent; all 0 when ``results`` is empty.
    """
    coco_gt = _load_gt(gt)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        if iou_type == "segm" and results and any("segmentation" not in r for r in results):
            raise ValueError("segm evaluation needs 'segmentation' in every result")
        if not results:
            # pycocotools' loadRes fails on an empty list; no detection at all is AP 0.
            metrics.update({f"{iou_type}/{name}": 0.0 for name in METRIC_NAMES})
            continue
        entries = results
        if iou_type == "segm":
            # Without a bbox, loadRes derives each detection's area from its mask, which is what
            # the APs/APm/APl ranges of mask AP must use (the box area would mis-bin them).
            entries = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        out = io.StringIO()
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(out):
            coco_dt = coco_gt.loadRes([dict(r) for r in entries])  # loadRes mutates entries
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = sorted({int(i) for i in image_ids})
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(METRIC_NAMES, evaluator.stats[:6]):
            metrics[f"{iou_type}/{name}"] = float(value) * 100 if value >= 0 else math.nan
    return metrics


def _gather(items: list[Any]) -> list[Any]:
    """Concatenate ``items`` from every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return items
    gathered: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: Any,
    device: torch.device | str,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    iou_types: Sequence[str] = ("bbox", "segm"),
    mask_threshold: float = 0.5,
    output_dir: str | Path | None = None,
    max_images: int | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Run ``model`` over ``dataset`` and COCO-evaluate its predictions.

    Under ``torch.distributed`` each rank predicts its shard; results are gathered to every
    rank, so all ranks return the same metrics (only rank 0 writes files).

    Args:
        model: detector returning torchvision-style outputs in eval mode (the unwrapped module,
            not the DDP wrapper); its train/eval mode is restored afterwards.
        dataset: a ``CocoDetection`` in ``eval`` mode (original-size images; provides ``coco``
            and ``label_to_cat_id``).
        device: where the model runs.
        batch_size, num_workers: loader settings.
        iou_types: see ``coco_evaluate``; ``segm`` is skipped when the model returns no masks.
        mask_threshold: see ``predictions_to_coco``.
        output_dir: if given, write ``coco_results.json`` and ``metrics.json`` there (rank 0).
        max_images: evaluate the first ``max_images`` images only (a quick look).
        verbose: pycocotools' printing.

    Returns:
        Metrics as from ``coco_evaluate``, plus ``num_images`` and ``seconds_per_image``
        (model time only, without loading and COCOeval).
    """
    subset = dataset
    if max_images is not None and max_images < len(dataset):
        subset = torch.utils.data.Subset(dataset, range(max_images))
    loader = build_loader(subset, batch_size, num_workers, shuffle=False, seed=0)
    was_training = model.training
    model.eval()
    # image id -> its results; the sharding sampler pads by wrap-around, so an image may be
    # predicted twice (on two ranks): keying by id keeps one copy.
    per_image: dict[int, list[dict[str, Any]]] = {}
    has_masks = True
    model_seconds, local_images = 0.0, 0
    # a progress bar on the main process's terminal only (logs and CI get none)
    bar = tqdm(total=len(loader), desc="eval", unit="batch", leave=False,
               disable=not (_rank() == 0 and sys.stderr.isatty()))
    try:
        for images, targets in loader:
            ids = [int(t["image_id"]) for t in targets]
            start = time.perf_counter()
            outputs = model([image.to(device, non_blocking=True) for image in images])
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            model_seconds += time.perf_counter() - start
            local_images += len(images)
            has_masks = has_masks and all("masks" in o for o in outputs)
            for output, image_id in zip(outputs, ids):
                per_image[image_id] = predictions_to_coco(
                    [output], [image_id], dataset.label_to_cat_id, mask_threshold
                )
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    per_image = dict(_gather(list(per_image.items())))
    has_masks = all(_gather([has_masks]))
    results = [r for image_id in sorted(per_image) for r in per_image[image_id]]
    types = [t for t in iou_types if t != "segm" or has_masks]
    metrics = coco_evaluate(dataset.coco, results, types, image_ids=per_image, verbose=verbose)
    metrics["num_images"] = float(len(per_image))
    metrics["seconds_per_image"] = model_seconds / max(local_images, 1)
    if output_dir is not None and _rank() == 0:
        out = Path(output_dir)
        save_coco_results(out / "coco_results.json", results)
        write_json_atomic(out / "metrics.json", metrics, indent=None)
        log.info("wrote %d detections on %d images to %s", len(results), len(per_image),
                 out / "coco_results.json")
    return metrics


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
