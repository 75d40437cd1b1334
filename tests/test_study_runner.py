"""Runner semantics with a fake executor: skips, re-runs, failure records, dependent skips,
and the sweep's widening through the runner."""
import json
import math

import pytest

from vitdet_lib.study import records as rec
from vitdet_lib.study.profile import profile_from_dict
from vitdet_lib.study.runner import StudyRunner, run_study


class FakeExecutor:
    """Writes a success record like the notebooks do; raises for the names in ``fail``."""

    def __init__(self, fail=(), ap=None):
        self.calls, self.fail, self.ap = [], set(fail), ap

    def __call__(self, notebook, output, params, cwd):
        self.calls.append(params["run_name"])
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("{}")
        if params["run_name"] in self.fail:
            raise RuntimeError(f"boom in {params['run_name']}")
        ap = self.ap(params) if self.ap else 1.0
        rec.write_json_atomic(params["record_path"], rec.make_record(
            params["run_name"], rec.SUCCESS, parameters=params, metrics={"bbox/AP": ap}))


def _profile(tmp_path, **extra):
    data = {"name": "t", "results_dir": str(tmp_path / "results"),
            "work_dir": str(tmp_path / "work"), "sizes": {"S": []},
            "inits": {"random": {"kind": "random"},
                      "mae": {"kind": "mae", "pretrain_run": "pt-mae", "checkpoint": "last.pth"}},
            "runs": [{"name": "pt-mae", "notebook": "pretrain"},
                     {"name": "ft-S-{init}", "notebook": "finetune", "serves": ["T1"],
                      "matrix": {"init": ["random", "mae"]}, "init": "{init}", "size": "S"},
                     {"name": "other", "notebook": "complexity"}]}
    data.update(extra)
    return profile_from_dict(data)


def _status(tmp_path, name):
    return rec.read_record(rec.record_path(tmp_path / "results", name))["status"]


def test_rerun_skips_finished_and_deleted_result_reruns_only_that(tmp_path):
    profile = _profile(tmp_path)
    ex = FakeExecutor()
    summary = run_study(profile, executor=ex, echo=lambda s: None)
    assert ex.calls == ["pt-mae", "ft-S-random", "ft-S-mae", "other"]
    assert summary.count("success") == 4
    ex.calls.clear()
    summary = run_study(profile, executor=ex, echo=lambda s: None)
    assert ex.calls == [] and summary.count("cached") == 4
    rec.record_path(tmp_path / "results", "ft-S-random").unlink()
    run_study(profile, executor=ex, echo=lambda s: None)
    assert ex.calls == ["ft-S-random"]
    ex.calls.clear()
    run_study(profile, executor=ex, force=True, only="ft-S-r*", echo=lambda s: None)
    assert ex.calls == ["ft-S-random"]


def test_failure_is_recorded_dependents_skipped_others_complete(tmp_path):
    profile = _profile(tmp_path)
    lines = []
    summary = run_study(profile, executor=FakeExecutor(fail={"pt-mae"}), echo=lines.append)
    failed = rec.read_record(rec.record_path(tmp_path / "results", "pt-mae"))
    assert failed["status"] == "failed" and "boom in pt-mae" in failed["error"]
    assert "Traceback" in failed["error"] and failed["provenance"]["python"]
    assert _status(tmp_path, "ft-S-mae") == "skipped"
    assert _status(tmp_path, "ft-S-random") == "success" and _status(tmp_path, "other") == "success"
    assert summary.count("failed") == 1 and summary.count("skipped") == 1
    assert "FAILED" in "\n".join(lines) and "1 failed" in lines[-1]
    # the next run retries the failed and skipped runs only
    ex = FakeExecutor()
    run_study(profile, executor=ex, echo=lambda s: None)
    assert ex.calls == ["pt-mae", "ft-S-mae"]
    summary_file = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary_file["profile"] == "t"


def test_notebook_without_record_counts_as_failed(tmp_path):
    profile = _profile(tmp_path)
    runner = StudyRunner(profile, executor=lambda nb, out, params, cwd: None, echo=lambda s: None)
    runner.run(only="other")
    assert _status(tmp_path, "other") == "failed"


def test_changed_parameters_rerun(tmp_path):
    profile = _profile(tmp_path)
    ex = FakeExecutor()
    run_study(profile, executor=ex, only="other", echo=lambda s: None)
    profile.runs[2].parameters = {"iters": 3}
    ex.calls.clear()
    run_study(profile, executor=ex, only="other", echo=lambda s: None)
    assert ex.calls == ["other"]


# peak 16 stops at max_widenings=2 with the best (8) still on the border
@pytest.mark.parametrize("peak, widened, best_lr",
                         [(1.0, 0, 1.0), (2.0, 1, 2.0), (4.0, 2, 4.0), (16.0, 2, 8.0)])
def test_sweep_widens_then_tunes_drop_path(tmp_path, peak, widened, best_lr):
    def ap(params):  # peak at lr=peak, wd=0.1; the dp stage prefers 0.1
        return 50 - math.log2(params["lr"] / peak) ** 2 - math.log2(
            params["weight_decay"] / 0.1) ** 2 - abs(params["drop_path"] - 0.1)

    sweep = {"name": "hp", "inits": ["random"], "size": "S", "lr": [0.5, 1.0, 2.0],
             "weight_decay": [0.05, 0.1, 0.2], "drop_path": [0.0, 0.1], "max_widenings": 2}
    profile = _profile(tmp_path, sweeps=[sweep])
    ex = FakeExecutor(ap=ap)
    run_study(profile, executor=ex, only="hp-*", echo=lambda s: None)
    grid = [c for c in ex.calls if "-lr" in c]
    assert len(grid) == 9 + 3 * widened
    dp_runs = [c for c in ex.calls if "-dp" in c]
    assert dp_runs == ["hp-random-dp0.1"]  # dp 0 at the same schedule is the grid run
    dp_record = rec.read_record(rec.record_path(tmp_path / "results", "hp-random-dp0.1"))
    assert (dp_record["parameters"]["lr"] == best_lr
            and dp_record["parameters"]["stage"] == "drop_path")


def test_fallback_data_when_fashion_mnist_is_missing(tmp_path, monkeypatch):
    from vitdet_lib.data.pretrain_shapes import shape_pretrain_images
    from vitdet_lib.study import runner as runner_mod

    monkeypatch.setattr(runner_mod, "fashion_available", lambda: False)
    seen = {}

    def ex(notebook, output, params, cwd):
        seen[params["run_name"]] = params["fallback_overrides"]
        FakeExecutor()(notebook, output, params, cwd)

    lines = []
    run_study(_profile(tmp_path, data_fallback=["data.generated.kind=shapes"]), executor=ex,
              echo=lines.append)
    assert seen["ft-S-random"] == ["data.generated.kind=shapes"]
    assert "shape scenes" in lines[0]
    images, labels = shape_pretrain_images(16)
    assert images.shape == (16, 28, 28) and images.dtype.is_floating_point is False
    assert set(labels.tolist()) <= {0, 1, 2, 3} and images.float().mean() > 0


def test_only_a_sweep_brings_its_pretraining(tmp_path):
    sweep = {"name": "hp", "inits": ["mae"], "size": "S", "lr": [1.0], "weight_decay": [0.1],
             "drop_path": [0.1], "max_widenings": 0}
    ex = FakeExecutor()
    run_study(_profile(tmp_path, sweeps=[sweep]), executor=ex, only="hp-*", echo=lambda s: None)
    assert ex.calls == ["pt-mae", "hp-mae-lr1-wd0.1", "hp-mae-dp0.1"]


@pytest.mark.parametrize("strict, reruns", [(True, ["other"]), (False, [])])
def test_code_change_reruns_only_where_the_profile_says_so(tmp_path, monkeypatch, strict, reruns):
    """A study run in stages over several sessions (stale_on_code_change: false) keeps its
    finished runs when the code changes; parameters still count (previous test)."""
    from vitdet_lib.study import fingerprint as fpmod

    profile = _profile(tmp_path, stale_on_code_change=strict)
    ex = FakeExecutor()
    run_study(profile, executor=ex, only="other", echo=lambda s: None)
    monkeypatch.setattr(fpmod, "code_version", lambda root: "another-version")
    ex.calls.clear()
    run_study(profile, executor=ex, only="other", echo=lambda s: None)
    assert ex.calls == reruns


def test_a_shipping_profile_exports_its_best_current_table1_run(tmp_path):
    """ship_checkpoints: after a run the best current recipe run's detector is exported
    (here the fake runs left no checkpoint, which the runner reports and survives)."""
    import torch

    class WithCheckpoint(FakeExecutor):
        def __call__(self, notebook, output, params, cwd):
            super().__call__(notebook, output, params, cwd)
            work = tmp_path / "w" / params["run_name"]
            work.mkdir(parents=True)
            torch.save({"model": {"w": torch.ones(1)}}, work / "last.pth")
            r = rec.read_record(params["record_path"])
            r["artifacts"] = {"work_dir": str(work)}
            rec.write_json_atomic(params["record_path"], r)

    profile = _profile(tmp_path, ship_checkpoints=True)
    said = []
    ap = {"ft-S-random": 2.0, "ft-S-mae": 3.0}
    run_study(profile, executor=WithCheckpoint(ap=lambda p: ap.get(p["run_name"], 1.0)),
              echo=said.append)
    assert any("ship: ft-S-mae (val APbox 3.00) written to" in s for s in said)
    assert (tmp_path / "results" / "checkpoints" / "detector.pth").is_file()
