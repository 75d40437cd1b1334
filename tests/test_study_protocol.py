"""The study protocol through the runner (fake executor, no training): tuned final runs wait for
their init's sweep and take its winner; random init trains schedule_factor x longer; seeds
expand; a changed params file or upstream checkpoint makes dependants stale; failed, stale and
missing runs are reported; partial runs merge into the summary; stages run alone."""
import json

from vitdet_lib.study import aggregate as agg
from vitdet_lib.study import records as rec
from vitdet_lib.study.profile import profile_from_dict
from vitdet_lib.study.runner import run_study, study_state


class Fake:
    """Writes success records like the notebooks; val AP peaks at lr 2e-3 and dp 0.1; a
    pre-training run records its checkpoint's sha256 (``sha``)."""

    def __init__(self, sha="aaa", fail=()):
        self.calls, self.sha, self.fail = [], sha, set(fail)

    def __call__(self, notebook, output, params, cwd):
        name = params["run_name"]
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"boom in {name}")
        lr, dp = params.get("lr") or 1e-3, params.get("drop_path") or 0.0
        val = 50 - abs(lr - 2e-3) * 1e3 - abs(dp - 0.1) * 10
        metrics = {"bbox/AP": val, "test/bbox/AP": val - 1, "lr": lr, "drop_path": dp}
        extra = {"artifacts": {"checkpoint_sha256": {"last.pth": self.sha}}} \
            if notebook.stem == "pretrain" else {}
        rec.write_json_atomic(params["record_path"], rec.make_record(
            name, rec.SUCCESS, parameters=params, metrics=metrics, **extra))


def _profile(tmp_path, params_file=None):
    params_file = params_file or tmp_path / "ft.yaml"
    if not params_file.exists():
        params_file.write_text("train: {lr: 1.0e-3}\n")
    return profile_from_dict({
        "name": "p", "results_dir": str(tmp_path / "results"), "work_dir": str(tmp_path / "w"),
        "sizes": {"S": []},
        "inits": {"random": {"kind": "random", "schedule_factor": 4},
                  "mae": {"kind": "mae", "pretrain_run": "pt-mae", "checkpoint": "last.pth"}},
        "runs": [{"name": "pt-mae", "notebook": "pretrain", "stage": "pretrain"},
                 {"name": "ft-{init}-ep{epochs}", "notebook": "finetune", "stage": "final",
                  "serves": ["T1", "F2"], "matrix": {"init": ["random", "mae"], "epochs": [1, 2]},
                  "seeds": [0, 1], "tuned_by": "hp", "init": "{init}", "size": "S",
                  "parameters": {"params": str(params_file), "epochs": "{epochs}"}},
                 {"name": "other", "notebook": "complexity", "stage": "final"}],
        "sweeps": [{"name": "hp", "inits": ["random", "mae"], "size": "S",
                    "lr": [1e-3, 2e-3, 4e-3], "weight_decay": [0.1], "drop_path": [0.0, 0.1],
                    "max_widenings": 0, "parameters": {"params": str(params_file),
                                                       "epochs": 0.5}}]})


def _record(tmp_path, name):
    return rec.read_record(rec.record_path(tmp_path / "results", name))


def test_final_runs_wait_for_their_sweep_and_take_its_winner(tmp_path):
    fake = Fake()
    run_study(_profile(tmp_path), executor=fake, echo=lambda s: None)
    sweep_done = fake.calls.index("hp-mae-dp0.1")
    assert fake.calls.index("ft-mae-ep1-s0") > sweep_done > fake.calls.index("pt-mae")
    final = _record(tmp_path, "ft-mae-ep2-s1")["parameters"]
    assert (final["lr"], final["drop_path"], final["seed"], final["epochs"]) == (2e-3, 0.1, 1, 2.0)
    rnd = _record(tmp_path, "ft-random-ep2-s0")["parameters"]
    assert rnd["epochs"] == 8.0 and rnd["schedule_epochs"] == 2.0  # 4x in final runs
    assert _record(tmp_path, "hp-random-lr0.002-wd0.1")["parameters"]["epochs"] == 2.0  # and tuning
    assert _record(tmp_path, "ft-mae-ep1-s0")["fingerprint"]["checkpoint"] == "aaa"
    # the whole study again: nothing runs
    fake.calls.clear()
    summary = run_study(_profile(tmp_path), executor=fake, echo=lambda s: None)
    assert fake.calls == [] and summary.count("cached") == len(summary.outcomes)


def test_changed_params_file_makes_its_runs_stale_and_they_rerun(tmp_path):
    profile = _profile(tmp_path)
    run_study(profile, executor=Fake(), echo=lambda s: None)
    (tmp_path / "ft.yaml").write_text("train: {lr: 5.0e-4}\n")
    states = study_state(profile)
    assert states["ft-mae-ep1-s0"].status == "stale"
    assert "params file changed" in states["ft-mae-ep1-s0"].message
    assert states["pt-mae"].status == "success" and states["other"].status == "success"
    lines, fake = [], Fake()
    run_study(profile, executor=fake, echo=lines.append)
    assert "pt-mae" not in fake.calls and "ft-mae-ep1-s0" in fake.calls
    assert any("stale (params file changed" in line for line in lines)


def test_rerun_upstream_pretraining_invalidates_dependants(tmp_path):
    profile = _profile(tmp_path)
    run_study(profile, executor=Fake(sha="aaa"), echo=lambda s: None)
    run_study(profile, executor=Fake(sha="bbb"), only="pt-mae", force=True, echo=lambda s: None)
    states = study_state(profile)
    assert states["ft-mae-ep1-s0"].status == "stale"
    assert "initial checkpoint changed" in states["ft-mae-ep1-s0"].message
    assert states["ft-random-ep1-s0"].status == "success"  # random init has no checkpoint


def test_failed_and_missing_runs_are_reported_not_dropped(tmp_path):
    profile = _profile(tmp_path)
    run_study(profile, executor=Fake(fail={"ft-mae-ep2-s0"}), echo=lambda s: None)
    (tmp_path / "results" / "runs" / "old-run").mkdir(parents=True)
    rec.write_json_atomic(tmp_path / "results" / "runs" / "old-run" / "record.json",
                          rec.make_record("old-run", rec.SUCCESS, parameters={"serves": ["T1"]}))
    rec.record_path(tmp_path / "results", "ft-mae-ep2-s1").unlink()
    records, ignored = agg.study_records(profile)
    by = {r["run"]: r for r in records}
    assert ignored == 1 and "old-run" not in by
    assert by["ft-mae-ep2-s0"]["state"] == "failed" and by["ft-mae-ep2-s1"]["state"] == "no run"
    conv = agg.convergence(records).set_index(["init", "schedule"])
    assert conv.loc[("mae", 2.0), "state"] == "1 failed, 1 no run"
    assert conv.loc[("mae", 2.0), "n"] == 0


def test_partial_runs_merge_into_the_summary(tmp_path):
    profile = _profile(tmp_path)
    run_study(profile, executor=Fake(), echo=lambda s: None)
    n = len(json.loads((tmp_path / "results" / "summary.json").read_text())["outcomes"])
    run_study(profile, executor=Fake(), only="other", force=True, echo=lambda s: None)
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert len(summary["outcomes"]) == n > 10 and len(summary["invocations"]) == 2


def test_a_stage_runs_alone_and_needs_earlier_stages(tmp_path):
    profile = _profile(tmp_path)
    fake = Fake()
    summary = run_study(profile, executor=fake, stage="final", echo=lambda s: None)
    assert fake.calls == ["other"]  # final runs need the sweeps of stage tune
    assert summary.count("skipped") == 8
    assert "hp-mae" in _record(tmp_path, "ft-mae-ep1-s0")["reason"]
    run_study(profile, executor=fake, stage="pretrain", echo=lambda s: None)
    run_study(profile, executor=fake, stage="tune", echo=lambda s: None)
    fake.calls.clear()
    run_study(profile, executor=fake, stage="final", echo=lambda s: None)
    assert len(fake.calls) == 8 and "other" not in fake.calls


def test_results_dir_moves_the_work_dir_and_the_init_checkpoints(tmp_path):
    seen = {}

    class Spy(Fake):
        def __call__(self, notebook, output, params, cwd):
            seen[params["run_name"]] = params
            super().__call__(notebook, output, params, cwd)

    run_study(_profile(tmp_path), executor=Spy(), results_dir=tmp_path / "scratch",
              only="ft-mae-ep1-s0", echo=lambda s: None)
    assert seen["pt-mae"]["work_dir"] == str(tmp_path / "scratch" / "work" / "pt-mae")
    assert seen["ft-mae-ep1-s0"]["init_checkpoint"] == str(tmp_path / "scratch" / "work" / "pt-mae"
                                                            / "last.pth")
    assert not (tmp_path / "results").exists()


def test_records_stay_current_when_the_study_moves_to_other_folders(tmp_path):
    """Shipped records are checked in a clone whose work folder differs from the one they ran
    in: paths are not part of what a run computed (its checkpoint's sha256 is)."""
    run_study(_profile(tmp_path), executor=Fake(), results_dir=tmp_path / "ran_here",
              echo=lambda s: None)
    moved = _profile(tmp_path)  # the profile's own folders: records there, work elsewhere
    moved.results_dir, moved.work_dir = str(tmp_path / "ran_here"), str(tmp_path / "elsewhere")
    states = study_state(moved)
    assert {o.status for o in states.values()} == {"success"}
