"""Fashion-MNIST: the miniature study's pre-training images and its detection scenes.

The images come from Debian's ``dataset-fashion-mnist`` package (MIT; 60k train / 10k test,
28x28 grey, 10 classes); nothing is downloaded. Split use mirrors the paper's setting, where
pre-training (ImageNet) and detection (COCO) images are different photos:

- the **train** split (60k) is for pre-training (``load_fashion_mnist("train")``);
- the **test** split (10k) is the only source of the detection scenes
  (``write_fashion_scenes``), and its items are divided into disjoint pools for the scene
  splits (train / val / and, when asked for, a held-out test split), so no item appears in two
  of them: a model selected on val is reported on scenes built from items it never saw.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..io import write_json_atomic, write_text_atomic
from .scenes import CocoWriter, Layer, composite

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "VITDET_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# COCO's area ranges (pixels of the instance mask), as COCOeval uses them.
_SMALL_MAX, _MEDIUM_MAX = 32**2, 96**2


class FashionMNISTNotFoundError(FileNotFoundError):
    """The Fashion-MNIST idx files are not where they were looked for."""


class FashionMNISTFormatError(ValueError):
    """A Fashion-MNIST idx file is truncated or not an idx file."""


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """The directory holding the idx files: ``root``, else ``$VITDET_FASHION_MNIST_DIR``, else
    Debian's install location."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(FASHION_MNIST_ENV) or DEFAULT_FASHION_MNIST_DIR)


def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    # idx format: 2 zero bytes, dtype code (0x08 = uint8), ndim, ndim big-endian int32 dims, data.
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != expected_ndim:
        raise FashionMNISTFormatError(f"{path}: not a uint8 idx file with {expected_ndim} dims")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=expected_ndim, offset=4))
    offset = 4 + 4 * expected_ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise FashionMNISTFormatError(
            f"{path}: header says {dims} but holds {len(raw) - offset} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


@functools.lru_cache(maxsize=4)
def _load_cached(split: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    image_path, label_path = (directory / name for name in _FILES[split])
    missing = [str(p) for p in (image_path, label_path) if not p.is_file()]
    if missing:
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install with "
            f"`sudo apt-get install dataset-fashion-mnist` or pass a directory / set env var "
            f"`{FASHION_MNIST_ENV}`."
        )
    images, labels = _read_idx(image_path, 3), _read_idx(label_path, 1).astype(np.int64)
    if len(images) != len(labels):
        raise FashionMNISTFormatError(
            f"{image_path}: {len(images)} images but {len(labels)} labels"
        )
    # Cached arrays are shared by every caller: make them read-only rather than risk one caller's
    # in-place edit leaking into another's data.
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(
    split: Literal["train", "test"], root: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split.

    Args:
        split: ``"train"`` (60k, for pre-training) or ``"test"`` (10k, for detection scenes).
        root: directory of the ``*-idx*-ubyte.gz`` files; see ``fashion_mnist_dir``.

    Returns:
        images uint8 [N, 28, 28] (white item on black) and labels int64 [N] in 0..9; both
        read-only (they are cached).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _load_cached(split, fashion_mnist_dir(root).resolve())


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured clutter uint8 [size, size, 3]: coloured low-frequency blobs at two scales, random
    stripes and pixel noise, so that "not black" does not mean "object"."""
    layers = []
    for cells in (4, 16):
        coarse = rng.uniform(0, 1, size=(cells, cells, 3)).astype(np.float32)
        layers.append(
            np.asarray(
                Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
            )
        )
    base = 0.6 * layers[0].astype(np.float32) + 0.4 * layers[1].astype(np.float32)
    base = base * rng.uniform(0.3, 0.9) + rng.uniform(0, 60)
    # Stripes at a random angle and period: edges that belong to no object.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    base = base + rng.uniform(0, 25) * stripes[..., None]
    base = base + rng.normal(0, rng.uniform(3, 15), size=base.shape).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8)


def _item_layer(
    rng: np.random.Generator, item: np.ndarray, label: int, canvas: int, size_range: tuple[int, int]
) -> Layer:
    """An item scaled to a log-uniform side in ``size_range``, tinted, and placed so that at least
    3/4 of its side lies inside the canvas on each axis."""
    side = round(np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1]))))
    grey = (
        np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR), dtype=np.float32)
        / 255
    )
    # The silhouette: Fashion-MNIST items are light on exact black; a low threshold keeps the
    # dark parts of an item (a black shoe's sole) inside its mask.
    mask = grey > 0.08
    tint = rng.uniform(0.25, 1.0, size=3).astype(np.float32)
    brightness = rng.uniform(0.5, 1.0)
    # Shade = the item's own grey texture times a colour, lifted so dark items stay visible.
    shade = (0.3 + 0.7 * grey[..., None]) * tint * brightness * 255
    shade = shade + rng.normal(0, 4, size=shade.shape)
    pixels = np.clip(shade, 0, 255).astype(np.uint8)
    top = int(rng.integers(-side // 4, canvas - 3 * side // 4 + 1))
    left = int(rng.integers(-side // 4, canvas - 3 * side // 4 + 1))
    return Layer(mask, pixels, top, left, label + 1)


# Pool order of the non-train splits: val first, then test, then any other name alphabetically,
# so the pools do not depend on the order in which a caller lists the splits.
_POOL_ORDER = {"val": 0, "test": 1}


def _pools(
    num_items: int, seed: int, splits: list[str], val_fraction: float
) -> dict[str, np.ndarray]:
    """Disjoint test-split item indices per scene split: 'train' gets ``1 - val_fraction`` of the
    items (of one seeded permutation), the other splits share the rest equally, val first.

    With only train and val, val gets the whole held-back share; adding a test split halves it
    (so a dataset with a test split has different val scenes than one without).
    """
    order = np.random.default_rng([seed, 0x5EED]).permutation(num_items)
    others = sorted((s for s in splits if s != "train"), key=lambda s: (_POOL_ORDER.get(s, 2), s))
    num_train = num_items - round(val_fraction * num_items) if others else num_items
    pools = {"train": order[:num_train]} if "train" in splits else {}
    for i, chunk in enumerate(np.array_split(order[num_train:], max(len(others), 1))):
        if i < len(others):
            pools[others[i]] = chunk
    return pools


def _pool_digest(pool: np.ndarray) -> str:
    """sha256 of a pool's sorted item indices (int64 little-endian): the datasheet's record of
    exactly which Fashion-MNIST test items a split may use."""
    return hashlib.sha256(np.sort(pool).astype("<i8").tobytes()).hexdigest()


def write_fashion_scenes(
    out_dir: str | Path,
    split_sizes: dict[str, int] | None = None,
    image_size: int = 256,
    seed: int = 0,
    *,
    items_per_image: tuple[int, int] = (2, 8),
    item_size_range: tuple[int, int] | None = None,
    val_fraction: float = 0.3,
    root: str | Path | None = None,
) -> dict[str, Path]:
    """Compose detection scenes from Fashion-MNIST *test* items and write them in COCO format.

    Each image has a textured background and a random number of items (tinted, log-uniform size,
    possibly truncated at the border, overlapping in random order); masks are the visible part of
    each item's silhouette. Scene ``i`` of split ``s`` depends only on ``(seed, s, i)`` and on the
    set of split names (which fixes the item pools: adding a test split halves val's), not on
    the number of images.

    Args:
        out_dir: dataset root: ``images/{split}/``, ``annotations/instances_{split}.json``,
            ``datasheet.json``, ``datasheet.md``.
        split_sizes: images per split, e.g. ``{"train": 2000, "val": 500, "test": 500}``;
            default 64 / 16 (train / val). Each split draws from its own pool of items.
        image_size: square image side.
        seed: base seed of everything (item pools, scenes).
        items_per_image: inclusive range of items pasted per image; heavily occluded items are
            left unannotated (see ``composite``).
        item_size_range: item side in pixels, sampled log-uniformly; default
            ``(image_size // 16, image_size * 3 // 4)``, i.e. 16..192 at 256, which gives COCO
            small, medium and large instances (about 48% / 43% / 9% after occlusion).
        val_fraction: share of the test-split items reserved for the non-train splits (shared
            equally by val and test when both are written; see ``_pools``).
        root: Fashion-MNIST directory (see ``fashion_mnist_dir``).

    Returns:
        ``{split: annotations json path}``.
    """
    split_sizes = dict(split_sizes or {"train": 64, "val": 16})
    item_size_range = item_size_range or (image_size // 16, image_size * 3 // 4)
    images, labels = load_fashion_mnist("test", root)
    pools = _pools(len(images), seed, list(split_sizes), val_fraction)
    categories = [(i + 1, name) for i, name in enumerate(FASHION_MNIST_CLASSES)]
    source = fashion_mnist_dir(root).resolve()
    paths: dict[str, Path] = {}
    params = {
        "image_size": image_size,
        "items_per_image": list(items_per_image),
        "item_size_range": list(item_size_range),
        "val_fraction": val_fraction,
    }
    for split, count in split_sizes.items():
        pool = pools[split]
        info = {
            "description": "Fashion-MNIST scenes (vitdet_lib.data.fashion)",
            "seed": seed,
            "split": split,
            "source": str(source),
            **params,
        }
        writer = CocoWriter(out_dir, split, categories, info)
        for index in range(count):
            rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
            background = _background(rng, image_size)
            chosen = rng.choice(
                pool, size=int(rng.integers(items_per_image[0], items_per_image[1] + 1))
            )
            layers = [
                _item_layer(rng, images[i], int(labels[i]), image_size, item_size_range)
                for i in chosen
            ]
            for layer, item in zip(layers, chosen):
                layer.extra["fashion_mnist_test_index"] = int(item)  # provenance: the source item
            writer.add(*composite(background, layers))
        paths[split] = writer.write()
    pool_info = {s: {"size": len(p), "sha256": _pool_digest(p)} for s, p in pools.items()}
    sheet = _datasheet(paths, seed, source, params, pool_info)
    write_json_atomic(Path(out_dir) / "datasheet.json", sheet, indent=1)
    write_text_atomic(Path(out_dir) / "datasheet.md", _datasheet_markdown(sheet))
    return paths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _datasheet(
    paths: dict[str, Path],
    seed: int,
    source: Path,
    params: dict[str, Any],
    pools: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Counts computed from the written json files, so the sheet describes what is on disk."""
    splits: dict[str, Any] = {}
    for split, path in paths.items():
        data = json.loads(path.read_text())
        per_class = {name: 0 for name in FASHION_MNIST_CLASSES}
        per_image = {image["id"]: 0 for image in data["images"]}
        sizes = {"small": 0, "medium": 0, "large": 0}
        box_sides = []
        for ann in data["annotations"]:
            per_class[FASHION_MNIST_CLASSES[ann["category_id"] - 1]] += 1
            per_image[ann["image_id"]] += 1
            area = ann["area"]
            sizes[
                "small" if area < _SMALL_MAX else "medium" if area < _MEDIUM_MAX else "large"
            ] += 1
            box_sides.append(float(np.sqrt(ann["bbox"][2] * ann["bbox"][3])))
        counts = np.array(list(per_image.values()) or [0])
        splits[split] = {
            "annotations": str(path.relative_to(path.parent.parent)),
            "num_images": len(data["images"]),
            "num_instances": len(data["annotations"]),
            "item_pool_size": pools[split]["size"],
            "item_pool_sha256": pools[split]["sha256"],
            "instances_per_class": per_class,
            "instances_per_image": {
                "min": int(counts.min()),
                "mean": float(counts.mean()),
                "max": int(counts.max()),
                "histogram": {
                    str(k): int((counts == k).sum()) for k in range(int(counts.max()) + 1)
                },
            },
            "area_ranges": sizes,
            "box_sqrt_area_percentiles": {
                str(q): float(np.percentile(box_sides, q)) if box_sides else 0.0
                for q in (5, 25, 50, 75, 95)
            },
        }
    return {
        "name": "Fashion-MNIST scenes",
        "seed": seed,
        "source": {
            "dataset": "Fashion-MNIST test split "
            "(Debian package dataset-fashion-mnist, MIT licence)",
            "directory": str(source),
            "sha256": {name: _sha256(source / name) for name in _FILES["test"]},
        },
        "generator": {"module": "vitdet_lib.data.fashion.write_fashion_scenes", **params},
        "notes": (
            "Item pools of the splits are disjoint (one seeded permutation of the 10k test items: "
            "train takes 1 - val_fraction, val and test share the rest, val first); "
            "the Fashion-MNIST train split is not used. "
            "area_ranges count instance-mask areas with COCO's thresholds "
            "(small < 32^2 <= medium < 96^2 <= large)."
        ),
        "splits": splits,
    }


def _datasheet_markdown(sheet: dict[str, Any]) -> str:
    lines = [
        f"# {sheet['name']}",
        "",
        f"- seed: {sheet['seed']}",
        f"- source: {sheet['source']['dataset']}",
        f"- generator: `{sheet['generator']}`",
        f"- {sheet['notes']}",
        "",
    ]
    for split, s in sheet["splits"].items():
        per_image = s["instances_per_image"]
        summary = (
            f"{s['num_images']} images, {s['num_instances']} instances, "
            f"item pool {s['item_pool_size']} (sha256 {s['item_pool_sha256'][:12]}...); "
            f"instances per image min {per_image['min']} / "
            f"mean {per_image['mean']:.2f} / max {per_image['max']}."
        )
        lines += [
            f"## {split}",
            "",
            summary,
            "",
            "| class | instances |",
            "|---|---|",
            *(f"| {name} | {n} |" for name, n in s["instances_per_class"].items()),
            "",
            "| COCO area range | instances |",
            "|---|---|",
            *(f"| {name} | {n} |" for name, n in s["area_ranges"].items()),
            "",
        ]
    return "\n".join(lines)

