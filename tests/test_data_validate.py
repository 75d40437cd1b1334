"""Up-front dataset validation: every problem at once, naming the file and the entry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from coco_files import write_coco
from PIL import Image

from vitdet_lib.data import CocoDatasetError, check_coco, validate_coco
from vitdet_lib.data.validate import SHOWN
from vitdet_lib.errors import DatasetError, InputError


def edit_json(ann: Path, change) -> None:
    data = json.loads(ann.read_text())
    change(data)
    ann.write_text(json.dumps(data))


def test_a_good_dataset_has_no_problems(tmp_path):
    images, ann = write_coco(tmp_path)
    assert validate_coco(images, ann) == []
    check_coco(images, ann)  # does not raise


def test_image_files_missing_empty_corrupt_or_wrongly_sized(tmp_path):
    images, ann = write_coco(tmp_path, n=5)
    (images / "0.png").unlink()
    (images / "1.png").write_bytes(b"")
    (images / "2.png").write_bytes(b"\x89PNG but then garbage")
    Image.new("RGB", (64, 50)).save(images / "3.png")
    problems = validate_coco(images, ann)
    assert [(p.file, p.image_id) for p in problems] == [
        (str(images / f"{i}.png"), i) for i in range(4)]
    assert [p.message.split(":")[0] for p in problems] == [
        "image file missing", "empty image file (0 bytes)", "unreadable image",
        "image is 64x50 but the annotations say 64x64"]


def test_size_check_reads_the_header_only(tmp_path, monkeypatch):
    images, ann = write_coco(tmp_path, n=2)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels were decoded"))
    assert validate_coco(images, ann) == []


def test_annotation_problems_name_the_json_and_the_annotation_id(tmp_path):
    images, ann = write_coco(tmp_path, n=3)

    def break_it(data):
        data["annotations"][0]["category_id"] = 42
        data["annotations"][1]["bbox"] = [8, 8, 0, 5]
        data["annotations"][2]["image_id"] = 77
        del data["images"][2]["width"]

    edit_json(ann, break_it)
    text = [str(p) for p in validate_coco(images, ann)]
    assert text == [
        f"{ann}: images[2]: missing required key(s) ['width']",
        f"{ann}: unknown category id 42 (image id 0, annotation id 100)",
        (f"{ann}: non-positive box width/height in bbox [8, 8, 0, 5] "
         "(image id 1, annotation id 101)"),
        f"{ann}: unknown image id (no valid images[] entry) (image id 77, annotation id 102)",
    ]
    dropped = [str(p) for p in validate_coco(images, ann, invalid_boxes="drop")]
    assert dropped == text[:2] + text[3:]  # the box is then accepted (the dataset drops it)


def test_unreadable_json_is_one_problem(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text("{nope")
    (problem,) = validate_coco(tmp_path, bad)
    assert problem.file == str(bad) and problem.message.startswith("not valid JSON")
    (problem,) = validate_coco(tmp_path, tmp_path / "none.json")
    assert problem.message == "annotation file not found"


def test_check_coco_lists_the_first_few_and_counts_the_rest(tmp_path):
    n = SHOWN + 4
    images, ann = write_coco(tmp_path, n=n)
    for i in range(n):
        (images / f"{i}.png").unlink()
    with pytest.raises(CocoDatasetError) as err:
        check_coco(images, ann)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{ann}: {n} problem(s) in this dataset (images in {images}):"
    assert lines[1] == f"  {images / '0.png'}: image file missing (image id 0)"
    assert len(lines) == 1 + SHOWN + 2 and lines[-2] == "  ... and 4 more"
    assert isinstance(err.value, DatasetError) and isinstance(err.value, InputError)
    assert isinstance(err.value, ValueError)  # old `except ValueError` callers still catch it


def test_header_check_can_be_skipped(tmp_path):
    images, ann = write_coco(tmp_path, n=1)
    (images / "0.png").unlink()
    assert validate_coco(images, ann, check_files=False) == []


def test_exif_rotated_jpeg_is_checked_as_displayed(tmp_path):
    images, ann = write_coco(tmp_path, n=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 64 wide x 48 high shows 48 x 64
    Image.new("RGB", (64, 48)).save(images / "0.jpg", exif=exif.tobytes())
    edit_json(ann, lambda d: d["images"][0].update(file_name="0.jpg", width=48, height=64))
    assert validate_coco(images, ann) == []
    edit_json(ann, lambda d: d["images"][0].update(width=64, height=48))
    (problem,) = validate_coco(images, ann)
    assert problem.message == "image is 48x64 but the annotations say 64x48"


def test_progress_bar_when_asked(tmp_path, capsys):
    images, ann = write_coco(tmp_path, n=2)
    validate_coco(images, ann, progress=True)
    assert f"checking {images}" in capsys.readouterr().err
    validate_coco(images, ann, progress=False)
    assert capsys.readouterr().err == ""
