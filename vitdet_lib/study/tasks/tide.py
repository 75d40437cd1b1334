"""Figure 4's task: TIDE's error breakdown of each initialisation's final predictions."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitdet_lib.tide import tide_errors

from .. import records as rec
from .launch import finish


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
