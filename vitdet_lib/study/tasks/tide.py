"""Figure 4's task: TIDE's error breakdown of each initialisation's final predictions."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from .. import records as rec
from .launch import finish

TIDE_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")


def tide_errors(gt_json: str | Path, results_json: str | Path, name: str) -> dict[str, float]:
    """TIDE's main errors (dAP at IoU 0.5, boxes) of one predictions file; GT from ``path=``
    (tidecv downloads COCO's annotations otherwise)."""
    from tidecv import TIDE, datasets  # optional dependency (the notebooks extra)

    gt = datasets.COCO(path=str(gt_json), name="gt")
    preds = datasets.COCOResult(path=str(results_json), name=name)
    tide = TIDE()
    with contextlib.redirect_stdout(io.StringIO()):
        tide.evaluate(gt, preds, pos_threshold=0.5, mode=TIDE.BOX, name=name)
    errors = tide.get_all_errors()["main"][name]
    return {k: float(errors[k]) for k in TIDE_ERRORS}


def tide(*, run_name: str, record_path: str, results_dir: str, sources: list[str],
         parameters: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    """F4: TIDE errors of the final predictions of each fine-tune run in ``sources``."""
    rows = []
    for source in sources:
        ft = rec.read_record(rec.record_path(results_dir, source))
        row: dict[str, Any] = {"source": source}
        if not rec.is_success(ft):
            row["error"] = "no successful fine-tune record"
        else:
            row["init"] = ft["parameters"].get("init")
            row["size"] = ft["parameters"].get("size")
            art = ft.get("artifacts", {})
            # the held-out test scenes when the run has them, as every reported number
            split = "test" if art.get("test_coco_results") else "val"
            prefix = "test_" if split == "test" else ""
            results_json = art.get(f"{prefix}coco_results")
            row["split"] = split
            if not results_json or not Path(results_json).is_file() or not json.loads(
                    Path(results_json).read_text()):
                row["error"] = "no predictions to analyse"
            else:
                row.update(tide_errors(art[f"{prefix}gt_annotations"], results_json, source))
        rows.append(row)
        print(row)
    record = rec.make_record(run_name, rec.SUCCESS, parameters=parameters,
                             metrics={"tide": rows, "pos_threshold": 0.5, "mode": "bbox"})
    return finish(record_path, record)
