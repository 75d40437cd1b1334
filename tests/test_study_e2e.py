"""The real path, reduced: papermill executes the fine-tune and complexity notebooks of a tiny
profile (one run fails on purpose), the records aggregate into Table 1, and a re-run skips."""
import json
from pathlib import Path

import pytest

from vitdet_lib.study import aggregate as agg
from vitdet_lib.study.profile import REPO_ROOT, profile_from_dict
from vitdet_lib.study.records import load_records
from vitdet_lib.study.runner import run_study


@pytest.mark.slow  # papermill kernels; the default suite's end to end is test_engine_e2e.py
def test_tiny_profile_through_papermill(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # params paths in profiles are relative to the repository
    tiny = ["data.generated.kind=shapes", "model.detector.num_classes=4",
            "data.generated.num_train=4", "data.generated.num_val=2", "train.max_iters=2",
            "train.eval_at=[1.0]", f"data.cache_dir={tmp_path / 'data'}"]
    profile = profile_from_dict({
        "name": "tiny", "note": "TINY", "results_dir": str(tmp_path / "results"),
        "work_dir": str(tmp_path / "work"), "sizes": {"S": tiny},
        "inits": {"random": {"kind": "random"}},
        "runs": [
            {"name": "ft-S-random", "notebook": "finetune", "serves": ["T1", "F2"],
             "init": "random", "size": "S",
             "parameters": {"params": "params/study/smoke_finetune.yaml"}},
            {"name": "ft-S-broken", "notebook": "finetune", "serves": ["T2"], "init": "random",
             "size": "S", "parameters": {"params": "params/study/smoke_finetune.yaml",
                                         "overrides": ["model.backbone.depth=5"]}},
            {"name": "t5", "notebook": "complexity", "serves": ["T5"],
             "parameters": {"params": "params/study/smoke_finetune.yaml", "sizes": {"S": tiny},
                            "resnet_depth": None, "timing": False}}]})
    summary = run_study(profile, echo=print)
    assert [o.status for o in summary.outcomes] == ["success", "failed", "success"]
    records = {r["run"]: r for r in load_records(tmp_path / "results")}
    ok = records["ft-S-random"]
    assert ok["metrics"]["iterations"] == 2 and "bbox/AP" in ok["metrics"]
    assert ok["provenance"]["packages"]["torch"] and ok["timings"]["wall_s"] > 0
    assert "depth=5" in records["ft-S-broken"]["error"]
    executed = tmp_path / "results" / "notebooks" / "ft-S-random.ipynb"
    assert "TINY" in executed.read_text()
    assert not list((tmp_path / "results").rglob("*.pth"))  # checkpoints stay in work_dir

    study, _ = agg.study_records(profile)
    df = agg.table1(study, sizes=["S"])
    md = agg.save_table(df, tmp_path / "report", "table1", "Table 1", "TINY", "T1")
    assert "no run" in md.read_text()
    assert df.set_index("init").loc["random", "APbox"] not in (agg.NO_RUN, "stale", "failed")

    again = run_study(profile, echo=print, only="ft-S-random")
    assert [o.status for o in again.outcomes] == ["cached"]
    assert json.loads(Path(tmp_path / "results" / "summary.json").read_text())["profile"] == "tiny"
