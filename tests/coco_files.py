"""A hand-made COCO-format dataset on disk, for tests of data validation and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def write_coco(folder: Path, n: int = 3, side: int = 64) -> tuple[Path, Path]:
    """A hand-made COCO set: ``n`` RGB images of ``side`` px, one square each, 4 categories
    (the smoke params' num_classes)."""
    images = folder / "images"
    images.mkdir(parents=True)
    entries, anns = [], []
    for i in range(n):
        Image.new("RGB", (side, side), (40 * i, 90, 0)).save(images / f"{i}.png")
        entries.append({"id": i, "file_name": f"{i}.png", "width": side, "height": side})
        anns.append({"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [8, 8, 20, 20],
                     "area": 400, "iscrowd": 0, "segmentation": [[8, 8, 28, 8, 28, 28, 8, 28]]})
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, 5)]
    ann = folder / "instances.json"
    ann.write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    return images, ann
