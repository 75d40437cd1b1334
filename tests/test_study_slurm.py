"""Study runs as submitit jobs (submitit's local executor stands in for SLURM): needs are
respected, a preempted job requeues and resumes, a killed job is failed, and invoking the
executor again resubmits it and the run resumes from what it had written."""
import json
import os
import signal
import time
from pathlib import Path

import submitit

from vitdet_lib.study import records as rec
from vitdet_lib.study.profile import REPO_ROOT, profile_from_dict
from vitdet_lib.study.slurm import STATE_NAME, SlurmStudyExecutor, inner_launcher

STEPS = 4


def fake_notebook(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
    """A training run in miniature: STEPS steps with a progress file (its ``last.pth``); the
    run named in ``interrupt`` is preempted (``preempt``) or killed (``kill``) at step 2 of
    its first attempt."""

    work = Path(parameters["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    progress = work / "progress.json"
    start = json.loads(progress.read_text())["step"] if progress.is_file() else 0
    for step in range(start, STEPS):
        time.sleep(0.2)
        progress.write_text(json.dumps({"step": step + 1}))
        how = parameters.get("interrupt")
        if step + 1 == 2 and how and not (work / "interrupted").exists():
            (work / "interrupted").write_text(how)
            sig = submitit.JobEnvironment._usr_sig() if how == "preempt" else signal.SIGKILL
            os.kill(os.getpid(), sig)
            time.sleep(30)  # the signal ends this attempt before the loop goes on
    rec.write_json_atomic(parameters["record_path"], rec.make_record(
        parameters["run_name"], rec.SUCCESS, parameters=parameters,
        metrics={"resumed_from": start, "steps": STEPS, "finished_at": time.time(),
                 "bbox/AP": 10.0 * parameters.get("lr", 0.0)}))


def _profile(tmp_path):
    runs = [{"name": "a", "notebook": "fake", "parameters": {"interrupt": "preempt"}},
            {"name": "b", "notebook": "fake", "needs": ["a"], "parameters": {}},
            {"name": "c", "notebook": "fake", "parameters": {"interrupt": "kill"}},
            {"name": "d", "notebook": "fake", "init": "random", "size": "S", "tuned_by": "hp",
             "parameters": {}}]
    # one init's tuning sweep (a node of its own, one job): d takes its winner's lr
    sweeps = [{"name": "hp", "inits": ["random"], "size": "S", "lr": [1e-3, 2e-3],
               "weight_decay": [0.1], "drop_path": [], "max_widenings": 0, "parameters": {}}]
    return profile_from_dict({
        "name": "jobs", "results_dir": str(tmp_path / "results"),
        "work_dir": str(tmp_path / "work"),
        "launcher": {"kind": "slurm", "nodes": 1, "gpus_per_node": 0, "time_limit_min": 10},
        "sizes": {"S": []}, "inits": {"random": {"kind": "random"}}, "runs": runs,
        "sweeps": sweeps})


def test_jobs_respect_needs_requeue_on_preemption_and_resume_after_a_kill(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    # the job processes unpickle ``fake_notebook`` from this module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), str(REPO_ROOT)]))
    profile = _profile(tmp_path)
    lines = []
    ex = SlurmStudyExecutor(profile, executor=fake_notebook, cluster="local", poll_s=0.2,
                            echo=lines.append)
    summary = ex.run()
    status = {o.run: o.status for o in summary.outcomes}
    assert status == {"a": "success", "c": "failed", "b": "success", "hp-random": "success",
                      "d": "success"}, lines
    results = tmp_path / "results"
    a = rec.read_record(rec.record_path(results, "a"))
    b = rec.read_record(rec.record_path(results, "b"))
    assert a["metrics"]["resumed_from"] == 2  # requeued by the preemption, resumed at step 2
    assert b["metrics"]["resumed_from"] == 0
    assert b["metrics"]["finished_at"] > a["metrics"]["finished_at"]  # b waited for a
    c = rec.read_record(rec.record_path(results, "c"))
    assert c["status"] == rec.FAILED and "without a result" in c["error"]
    d = rec.read_record(rec.record_path(results, "d"))
    assert d["parameters"]["lr"] == 2e-3  # the sweep's winner (higher AP), decided in its job
    state = json.loads((results / STATE_NAME).read_text())
    assert state["a"]["attempts"] == 1 and state["c"]["outcome"] == "failed"

    again = SlurmStudyExecutor(profile, executor=fake_notebook, cluster="local", poll_s=0.2,
                               echo=lines.append).run()
    assert {o.run: o.status for o in again.outcomes} == {
        "a": "cached", "b": "cached", "c": "success", "hp-random": "success", "d": "cached"}
    c = rec.read_record(rec.record_path(results, "c"))
    assert c["status"] == rec.SUCCESS and c["metrics"]["resumed_from"] == 2
    assert json.loads((results / STATE_NAME).read_text())["c"]["attempts"] == 2


def test_inner_launcher_and_submitit_parameters(tmp_path):
    profile = _profile(tmp_path)
    lc = profile.launcher
    assert inner_launcher(lc, 1, None).kind.value == "local"  # 0 GPUs: in-process
    lc.gpus_per_node = 8
    one = inner_launcher(lc, 1, None)
    assert (one.kind.value, one.nproc_per_node, one.nnodes, one.rdzv_endpoint) == \
        ("torchrun", 8, 1, None)
    two = inner_launcher(lc, 2, "node7")
    assert (two.nnodes, two.rdzv_endpoint) == (2, "node7:29500")
    ex = SlurmStudyExecutor(profile, cluster="local")
    ex.cluster = "slurm"  # the parameters a SLURM submission would get
    lc.partition, lc.account, lc.nodes = "gpu", "proj", 2
    params = ex.parameters()
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "proj"
    assert params["nodes"] == 2 and params["gpus_per_node"] == 8 and params["timeout_min"] == 10
