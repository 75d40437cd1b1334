"""Procedural instance-segmentation scenes written to disk in COCO format.

Dependency-free (numpy + PIL): used by the tests and as a fallback dataset, and its compositing
and COCO-writing helpers are shared with the Fashion-MNIST scene writer (``fashion.py``).

Layout written under ``out_dir`` (the same layout for every scene writer)::

    images/{split}/000000.png ...
    annotations/instances_{split}.json

Masks are the *visible* part of each object after occlusion by the objects pasted later, stored
as compressed COCO RLE (encoded here, decoded by pycocotools like any COCO file); boxes are the
tight boxes of those visible masks and ``area`` is their pixel count (what COCOeval uses for its
small/medium/large ranges).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..io import write_json_atomic

SHAPE_CLASSES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "pentagon")


@dataclass
class Layer:
    """One object pasted onto a canvas.

    Args:
        mask: bool [h, w], the object's silhouette in its own patch.
        pixels: uint8 [h, w, 3], the object's colours (only used where ``mask`` is set).
        top, left: position of the patch on the canvas; may be negative or run past the border
            (the object is then truncated, as objects at a photo's border are).
        category_id: COCO category id.
        extra: extra keys for the object's COCO annotation (e.g. its source item).
    """

    mask: np.ndarray
    pixels: np.ndarray
    top: int
    left: int
    category_id: int
    extra: dict[str, Any] = field(default_factory=dict)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a binary mask as compressed COCO RLE (the string pycocotools' ``encode`` writes).

    Args:
        mask: bool/uint8 [H, W].

    Returns:
        ``{"size": [H, W], "counts": str}``; runs are counted in column-major order, starting
        with a (possibly empty) run of zeros.
    """
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [height, width], "counts": _counts_to_string(counts)}


def _counts_to_string(counts: list[int]) -> str:
    # COCO's compact run-length string: each count (from the 4th on, as a difference to the
    # count two places before) in 5-bit groups, 0x20 flags "more groups follow", offset by 48
    # into printable ASCII. Python's >> on negative ints floors like the C reference.
    chars: list[str] = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def mask_to_xywh(mask: np.ndarray) -> list[float]:
    """Tight COCO box ``[x, y, w, h]`` of a non-empty mask; pixel ``i`` spans ``[i, i + 1)``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [
        float(cols[0]),
        float(rows[0]),
        float(cols[-1] + 1 - cols[0]),
        float(rows[-1] + 1 - rows[0]),
    ]


def composite(
    background: np.ndarray,
    layers: list[Layer],
    *,
    min_visible_pixels: int = 16,
    min_visible_fraction: float = 0.15,
) -> tuple[np.ndarray, list[tuple[np.ndarray, Layer]]]:
    """Paste ``layers`` in order (later ones on top) and recover each one's visible mask.

    Args:
        background: uint8 [H, W, 3].
        layers: bottom to top.
        min_visible_pixels, min_visible_fraction: an object whose visible part (inside the
            canvas, not occluded) is smaller than this is dropped from the annotations, as an
            annotator would not label it; its visible pixels stay in the image as clutter.

    Returns:
        The image uint8 [H, W, 3] and ``[(visible mask bool [H, W], layer), ...]`` of the
        annotated layers, bottom to top.
    """
    image = background.copy()
    height, width = image.shape[:2]
    # Which layer owns each pixel (-1: background); painting in order makes later layers win.
    owner = np.full((height, width), -1, dtype=np.int32)
    full_sizes: list[int] = []
    for index, layer in enumerate(layers):
        h, w = layer.mask.shape
        y0, x0 = max(layer.top, 0), max(layer.left, 0)
        y1, x1 = min(layer.top + h, height), min(layer.left + w, width)
        full_sizes.append(int(layer.mask.sum()))
        if y0 >= y1 or x0 >= x1:
            continue
        patch = layer.mask[y0 - layer.top : y1 - layer.top, x0 - layer.left : x1 - layer.left]
        pixels = layer.pixels[y0 - layer.top : y1 - layer.top, x0 - layer.left : x1 - layer.left]
        image[y0:y1, x0:x1][patch] = pixels[patch]
        owner[y0:y1, x0:x1][patch] = index
    objects: list[tuple[np.ndarray, Layer]] = []
    for index, layer in enumerate(layers):
        visible = owner == index
        count = int(visible.sum())
        if count < min_visible_pixels or count < min_visible_fraction * full_sizes[index]:
            continue
        objects.append((visible, layer))
    return image, objects


class CocoWriter:
    """Accumulates images and instance annotations of one split and writes the COCO json.

    Args:
        out_dir: dataset root; images go to ``images/{split}/``.
        split: split name, part of the file names.
        categories: ``[(id, name), ...]``.
        info: free-form provenance stored under the json's ``info`` key.
    """

    def __init__(
        self,
        out_dir: str | Path,
        split: str,
        categories: list[tuple[int, str]],
        info: dict[str, Any],
    ) -> None:
        self.root = Path(out_dir)
        self.split = split
        self.image_dir = self.root / "images" / split
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.categories = [
            {"id": cid, "name": name, "supercategory": "object"} for cid, name in categories
        ]
        self.info = info
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, image: np.ndarray, objects: list[tuple[np.ndarray, Layer]]) -> None:
        """Save ``image`` (uint8 [H, W, 3]) as PNG and record its visible-mask ``objects``."""
        image_id = len(self.images) + 1  # COCO ids start at 1
        file_name = f"{image_id - 1:06d}.png"
        # compress_level=1: PNG stays lossless and deterministic, and saving is ~5x faster.
        Image.fromarray(image).save(self.image_dir / file_name, compress_level=1)
        height, width = image.shape[:2]
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height}
        )
        for mask, layer in objects:
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": layer.category_id,
                    "bbox": mask_to_xywh(mask),
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": mask_to_rle(mask),
                    **layer.extra,
                }
            )

    def write(self) -> Path:
        """Write ``annotations/instances_{split}.json`` atomically and return its path."""
        path = self.root / "annotations" / f"instances_{self.split}.json"
        data = {
            "info": self.info,
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }
        write_json_atomic(path, data, indent=None)
        return path


def _shape_mask(kind: str, size_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Silhouette bool [h, w] of a shape filling its patch (a random rotation for polygons)."""
    h, w = size_hw
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "ellipse":
        draw.ellipse([0, 0, w - 1, h - 1], fill=1)
    elif kind == "rectangle":
        draw.rectangle([0, 0, w - 1, h - 1], fill=1)
    else:
        sides = 3 if kind == "triangle" else 5
        angles = rng.uniform(0, 2 * np.pi) + np.arange(sides) * 2 * np.pi / sides
        xs = (np.cos(angles) + 1) / 2 * (w - 1)
        ys = (np.sin(angles) + 1) / 2 * (h - 1)
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=1)
    return np.asarray(canvas, dtype=bool)


def _shape_scene(
    rng: np.random.Generator,
    image_size: int,
    shapes_per_image: tuple[int, int],
    size_range: tuple[float, float],
) -> tuple[np.ndarray, list[Layer]]:
    # Background: a smooth random gradient plus mild pixel noise, so no class is "the bright one".
    yy, xx = np.mgrid[0:image_size, 0:image_size] / max(image_size - 1, 1)
    corners = rng.uniform(40, 200, size=(3, 3))
    background = (
        corners[0]
        + (corners[1] - corners[0]) * xx[..., None]
        + (corners[2] - corners[0]) * yy[..., None]
    )
    background = background + rng.normal(0, 6, size=background.shape)
    background = np.clip(background, 0, 255).astype(np.uint8)
    layers: list[Layer] = []
    for _ in range(int(rng.integers(shapes_per_image[0], shapes_per_image[1] + 1))):
        category = int(rng.integers(len(SHAPE_CLASSES)))
        # Log-uniform side lengths: small objects are as common per octave as large ones.
        side = image_size * np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1])))
        aspect = np.exp(rng.uniform(-0.5, 0.5))
        h, w = max(int(side * aspect), 3), max(int(side / aspect), 3)
        mask = _shape_mask(SHAPE_CLASSES[category], (h, w), rng)
        colour = rng.integers(0, 256, size=3)
        pixels = np.clip(colour + rng.normal(0, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)
        top = int(rng.integers(-h // 4, image_size - 3 * h // 4 + 1))
        left = int(rng.integers(-w // 4, image_size - 3 * w // 4 + 1))
        layers.append(Layer(mask, pixels, top, left, category + 1))
    return background, layers


def write_shape_scenes(
    out_dir: str | Path,
    num_images: int = 8,
    image_size: int = 128,
    seed: int = 0,
    *,
    split: str = "train",
    shapes_per_image: tuple[int, int] = (2, 5),
    size_range: tuple[float, float] = (0.08, 0.6),
) -> Path:
    """Write ``num_images`` square scenes of overlapping shapes as a COCO split.

    Scene ``i`` depends only on ``(seed, split, i)``, so the same call always writes the same
    bytes and a larger ``num_images`` extends a smaller one.

    Args:
        out_dir: dataset root (see the module docstring for the layout).
        num_images: number of images.
        image_size: image side in pixels.
        seed: base seed.
        split: split name used in file names.
        shapes_per_image: inclusive range of shapes pasted per image (some may end up fully
            occluded and unannotated).
        size_range: shape side as a fraction of ``image_size``, sampled log-uniformly.

    Returns:
        Path of the annotations json; images are under ``out_dir/images/{split}``.
    """
    categories = [(i + 1, name) for i, name in enumerate(SHAPE_CLASSES)]
    info = {
        "description": "procedural shape scenes (vitdet_lib.data.scenes)",
        "seed": seed,
        "split": split,
        "image_size": image_size,
    }
    writer = CocoWriter(out_dir, split, categories, info)
    split_key = zlib.crc32(split.encode())  # a stable per-split stream (str hash() is salted)
    for index in range(num_images):
        rng = np.random.default_rng([seed, split_key, index])
        background, layers = _shape_scene(rng, image_size, shapes_per_image, size_range)
        image, objects = composite(background, layers)
        writer.add(image, objects)
    return writer.write()
