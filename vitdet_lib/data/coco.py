"""A COCO-format instance-segmentation dataset in torchvision's detection conventions.

One sample is ``(image, target)``:

- ``image``: float32 [3, H, W] in [0, 1], RGB, whatever the file's mode (L, RGB, RGBA, P,
  16-bit grey...);
- ``target``: ``boxes`` float32 [N, 4] (XYXY, absolute pixels), ``labels`` int64 [N]
  (contiguous 1..K, 0 is background), ``masks`` uint8 [N, H, W], ``image_id`` int (the COCO id);
  in ``eval`` mode also ``iscrowd`` int64 [N].

``train`` mode leaves crowd regions out of the targets (the detector never learns from them);
``eval`` mode keeps every annotation, and evaluation itself reads the ground-truth json, so that
COCOeval ignores detections matched to crowd regions exactly as on COCO.

Bad files fail loudly with ``CocoDatasetError`` naming the file and the offending annotation,
image or key: annotations are validated when the dataset is built (cheap), image files when
they are read (or all at once with ``check_images``). ``validate.py`` checks a whole dataset up
front and lists every problem; training calls it before the first step.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors

from ..errors import DatasetError

# (image uint8 [3, H, W] as tv_tensors.Image, target with tv_tensors boxes/masks) -> same pair.
Transform = Callable[[torch.Tensor, dict[str, Any]], tuple[torch.Tensor, dict[str, Any]]]

_REQUIRED_KEYS = {
    "dataset": ("images", "annotations", "categories"),
    "image": ("id", "file_name", "width", "height"),
    "category": ("id", "name"),
    # area and iscrowd are read by COCOeval itself, so a file without them cannot be evaluated.
    "annotation": ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"),
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class CocoDatasetError(DatasetError):
    """A COCO-format dataset is malformed; the message names the file and the faulty entry."""


def _require(entry: Any, kind: str, where: str) -> None:
    if not isinstance(entry, dict):
        raise CocoDatasetError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [key for key in _REQUIRED_KEYS[kind] if key not in entry]
    if missing:
        raise CocoDatasetError(f"{where}: missing required key(s) {missing}")


def _valid_polygons(segmentation: list[Any]) -> list[list[float]]:
    # Polygons with fewer than 3 points cannot be rasterised; COCO has a few and drops them.
    return [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]


def _check_segmentation(seg: Any, height: int, width: int, where: str) -> None:
    if isinstance(seg, list):
        if not _valid_polygons(seg):
            raise CocoDatasetError(f"{where}: segmentation has no polygon with >= 3 points")
        return
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise CocoDatasetError(
            f"{where}: segmentation must be polygons or an RLE with 'size' and 'counts'"
        )
    if list(seg["size"]) != [height, width]:
        raise CocoDatasetError(
            f"{where}: RLE size {seg['size']} differs from the image's [{height}, {width}]"
        )
    if isinstance(seg["counts"], list) and sum(seg["counts"]) != height * width:
        raise CocoDatasetError(
            f"{where}: uncompressed RLE counts sum to {sum(seg['counts'])}, "
            f"not H*W = {height * width}"
        )


def segmentation_to_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """Decode one COCO segmentation (polygons, uncompressed or compressed RLE) to uint8 [H, W]."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(_valid_polygons(seg), height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        counts = seg["counts"]
        rle = {
            "size": seg["size"],
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    return mask_utils.decode(rle)


def pil_to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL image as uint8 [H, W, 3] RGB (alpha dropped, palettes expanded, 16 -> 8 bits)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's convert("RGB") clips 16-bit values at 255 (most of the range turns white);
        # rescale 0..65535 to 0..255 instead.
        grey = np.clip(np.asarray(image, dtype=np.float32) / 257.0, 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes to RGB
    return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants


class CocoDetection(torch.utils.data.Dataset):
    """Images + instances json, decoded with pycocotools.

    Args:
        image_dir: directory the images' ``file_name`` entries are relative to.
        ann_file: COCO instances json.
        mode: ``"train"`` (crowd excluded from targets) or ``"eval"`` (all annotations, plus
            ``iscrowd``).
        transform: applied to ``(tv_tensors.Image uint8 [3, H, W], target)`` where the target's
            boxes are ``tv_tensors.BoundingBoxes`` and masks ``tv_tensors.Mask``; see
            ``transforms.py``. Its output image may be uint8 or float (converted to float).
        invalid_boxes: ``"raise"`` on an annotation whose box has non-positive size or lies
            outside its image, or ``"drop"`` it (counted in ``dropped_annotation_ids``).

    Attributes:
        coco: the pycocotools ``COCO`` index of ``ann_file``.
        image_ids: COCO image ids in dataset order (sorted).
        cat_id_to_label, label_to_cat_id: COCO category id <-> contiguous label 1..K (ids sorted).
        class_names: ``("__background__", name of label 1, ..., name of label K)``.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        *,
        mode: Literal["train", "eval"] = "train",
        transform: Transform | None = None,
        invalid_boxes: Literal["raise", "drop"] = "raise",
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if invalid_boxes not in ("raise", "drop"):
            raise ValueError(f"invalid_boxes must be 'raise' or 'drop', got {invalid_boxes!r}")
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.mode = mode
        self.transform = transform
        self.dropped_annotation_ids: list[int] = []
        data = self._load_json()
        self._validate(data, invalid_boxes)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
            self.coco.createIndex()
        self.image_ids: list[int] = sorted(self.coco.imgs)
        cat_ids = sorted(self.coco.cats)
        self.cat_id_to_label: dict[int, int] = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: cid for i, cid in enumerate(cat_ids)}
        self.class_names: tuple[str, ...] = (
            "__background__",
            *(self.coco.cats[c]["name"] for c in cat_ids),
        )

    @property
    def num_categories(self) -> int:
        """K, the number of foreground categories (torchvision's ``num_classes`` is K + 1)."""
        return len(self.label_to_cat_id)

    def _load_json(self) -> dict[str, Any]:
        if not self.ann_file.is_file():
            raise CocoDatasetError(f"{self.ann_file}: annotation file not found")
        try:
            with open(self.ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CocoDatasetError(f"{self.ann_file}: not valid JSON ({error})") from error
        _require(data, "dataset", str(self.ann_file))
        return data

    def _validate(self, data: dict[str, Any], invalid_boxes: str) -> None:
        """Check every image, category and annotation entry; fail on the first fault."""
        src = self.ann_file
        if not data["images"]:
            raise CocoDatasetError(f"{src}: empty dataset, 'images' has no entries")
        images: dict[int, dict[str, Any]] = {}
        for i, image in enumerate(data["images"]):
            _require(image, "image", f"{src}: images[{i}]")
            if image["id"] in images:
                raise CocoDatasetError(f"{src}: duplicate image id {image['id']}")
            if not (int(image["width"]) > 0 and int(image["height"]) > 0):
                raise CocoDatasetError(
                    f"{src}: image id {image['id']} has non-positive width/height"
                )
            images[image["id"]] = image
        categories = set()
        for i, category in enumerate(data["categories"]):
            _require(category, "category", f"{src}: categories[{i}]")
            categories.add(category["id"])
        if not categories:
            raise CocoDatasetError(f"{src}: 'categories' has no entries")
        kept = []
        for i, ann in enumerate(data["annotations"]):
            _require(ann, "annotation", f"{src}: annotations[{i}]")
            where = f"{src}: annotation id {ann['id']}"
            if ann["image_id"] not in images:
                raise CocoDatasetError(f"{where}: unknown image id {ann['image_id']}")
            if ann["category_id"] not in categories:
                raise CocoDatasetError(f"{where}: unknown category id {ann['category_id']}")
            image = images[ann["image_id"]]
            if not self._box_ok(ann["bbox"], image["width"], image["height"], where, invalid_boxes):
                self.dropped_annotation_ids.append(ann["id"])
                continue
            _check_segmentation(ann["segmentation"], image["height"], image["width"], where)
            kept.append(ann)
        data["annotations"] = kept

    @staticmethod
    def _box_ok(bbox: Any, width: int, height: int, where: str, invalid_boxes: str) -> bool:
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise CocoDatasetError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            problem = f"non-positive box width/height in bbox {bbox}"
        elif x >= width or y >= height or x + w <= 0 or y + h <= 0:
            problem = f"bbox {bbox} lies outside its {width}x{height} image"
        else:
            return True
        if invalid_boxes == "raise":
            raise CocoDatasetError(f"{where}: {problem}")
        return False

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.image_ids[index]]["file_name"]

    def load_image(self, index: int) -> torch.Tensor:
        """The image at ``index`` as uint8 [3, H, W] RGB, EXIF orientation applied."""
        info = self.coco.imgs[self.image_ids[index]]
        path = self.image_path(index)
        if not path.is_file():
            raise CocoDatasetError(
                f"{path}: image file missing (image id {info['id']}, {self.ann_file})"
            )
        try:
            with Image.open(path) as image, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                # Annotations refer to the image as displayed, i.e. after its EXIF rotation.
                array = pil_to_rgb_uint8(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError) as error:  # PIL raises these for corrupt files
            raise CocoDatasetError(
                f"{path}: unreadable image (image id {info['id']}): {error}"
            ) from error
        if array.shape[:2] != (info["height"], info["width"]):
            raise CocoDatasetError(
                f"{path}: image is {array.shape[1]}x{array.shape[0]} but {self.ann_file} says "
                f"{info['width']}x{info['height']} (image id {info['id']})"
            )
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def load_target(self, index: int) -> dict[str, Any]:
        """The target at ``index`` as plain tensors (see the module docstring)."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        anns = self.coco.imgToAnns.get(image_id, [])
        if self.mode == "train":
            anns = [a for a in anns if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for i, ann in enumerate(anns):
            masks[i] = segmentation_to_mask(ann["segmentation"], height, width)
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.tensor(
                [self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "masks": torch.from_numpy(masks),
            "image_id": image_id,
        }
        if self.mode == "eval":
            target["iscrowd"] = torch.tensor([int(a["iscrowd"]) for a in anns], dtype=torch.int64)
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image = self.load_image(index)
        target = self.load_target(index)
        if self.transform is not None:
            size = tuple(image.shape[-2:])
            image = tv_tensors.Image(image)
            target["boxes"] = tv_tensors.BoundingBoxes(
                target["boxes"], format="XYXY", canvas_size=size
            )
            target["masks"] = tv_tensors.Mask(target["masks"])
            image, target = self.transform(image, target)
        # Plain tensors out: tv_tensors subclasses must not leak into the model.
        image = image.as_subclass(torch.Tensor)
        image = image.float() / 255 if image.dtype == torch.uint8 else image.float()
        for key in ("boxes", "masks", "labels"):
            target[key] = target[key].as_subclass(torch.Tensor)
        target["boxes"] = target["boxes"].float()
        target["masks"] = target["masks"].to(torch.uint8)
        return image, target

    def check_images(self, *, decode: bool = False) -> None:
        """Check every image file; raise one ``CocoDatasetError`` listing all that fail.

        Args:
            decode: also decode the pixels (catches truncated files; seconds per thousand
                images). Without it only existence, the header and the size are checked.
        """
        problems = []
        for index in range(len(self)):
            try:
                if decode:
                    self.load_image(index)
                else:
                    self._check_header(index)
            except CocoDatasetError as error:
                problems.append(str(error))
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CocoDatasetError(
                f"{len(problems)} of {len(self)} images failed:\n  {shown}{more}"
            )

    def _check_header(self, index: int) -> None:
        info = self.coco.imgs[self.image_ids[index]]
        path = self.image_path(index)
        problem = image_header_problem(path, info["width"], info["height"])
        if problem is not None:
            raise CocoDatasetError(
                f"{path}: {problem} (image id {info['id']}, {self.ann_file})"
            )


def image_header_problem(path: Path, width: int, height: int) -> str | None:
    """What is wrong with one image file, from its header only (no pixels decoded): missing,
    empty, not an image PIL can identify, or not ``width`` x ``height`` as displayed (after
    its EXIF rotation). None if the header is fine."""
    if not path.is_file():
        return "image file missing"
    if path.stat().st_size == 0:
        return "empty image file (0 bytes)"
    try:
        with Image.open(path) as image:
            got_w, got_h = image.size
            # EXIF orientations 5-8 rotate by 90 degrees: the displayed image is transposed.
            # PIL decodes a whole PNG to look for an eXIf chunk after the pixels: only a PNG's
            # header chunk is read here (cameras write JPEG, whose EXIF is in the header).
            header_only = image.format == "PNG" and "exif" not in image.info
            if not header_only and image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                got_w, got_h = got_h, got_w
    except UnidentifiedImageError:
        return "unreadable image: not a format PIL knows, or a corrupt header"
    except (OSError, SyntaxError, ValueError) as error:
        return f"unreadable image: {error}"
    if (got_h, got_w) != (height, width):
        return f"image is {got_w}x{got_h} but the annotations say {width}x{height}"
    return None


def coco_split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(image_dir, ann_file)`` of a split written by the scene writers (``scenes.py``)."""
    root = Path(root)
    return root / "images" / split, root / "annotations" / f"instances_{split}.json"
