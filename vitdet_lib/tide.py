"""TIDE's error breakdown (Bolya et al. 2020) of COCO-format predictions: the paper's Figure 4.

``tidecv`` is an optional dependency (the ``notebooks`` extra). Its ``datasets.COCO()``
downloads COCO's annotations unless given a path, so ground truth is always passed by path.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

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
