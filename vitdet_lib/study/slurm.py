"""Study runs as SLURM jobs through ``submitit`` (``launcher: {kind: slurm, ...}``).

Each run of the profile becomes one job that executes the run's notebook exactly as
``study run`` does locally (``StudyRunner.execute``: same records, same skip / force / failure
semantics). Jobs are submitted in waves: a run is submitted once every run it needs has
finished, so a wave is the set of runs whose needs lie in earlier waves. Each tuning sweep
(its grid depends on results) runs as one job of its own after the static runs.

Preemption and time limits: the job is a ``submitit.helpers.Checkpointable``; when SLURM
signals it, ``checkpoint()`` requeues the same run without ``--force``, and the training
resumes from the run's ``last.pth``. Job ids and states are kept in
``<results_dir>/slurm_jobs.json``; invoking the executor again collects jobs still running or
finished instead of submitting them twice, and resubmits those that were lost.

Inside a job, a run with more than one GPU in total trains through ``torchrun`` (one process
per GPU; across nodes, node 0 runs the notebook and the other nodes join the same rendezvous
for fine-tuning runs). Pre-training and measurement runs get a single node.
"""
from __future__ import annotations

import copy
import fnmatch
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitdet_lib.io import read_json, write_json_atomic

from . import records as rec
from .profile import LauncherConfig, LauncherKind, Run, StudyProfile, SweepConfig, expand_runs
from .runner import Executor, Outcome, StudyRunner, StudySummary, select, topological_order

STATE_NAME = "slurm_jobs.json"
ACTIVE_STATES = ("RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                 "RESIZING")
RDZV_PORT = 29500


def inner_launcher(slurm: LauncherConfig, nodes: int, master: str | None) -> LauncherConfig:
    """How the notebook inside a job starts training: in-process on one device, else torchrun
    over the job's GPUs (with a rendezvous on node 0 across nodes)."""
    gpus = max(int(slurm.gpus_per_node), 1)
    if nodes * gpus <= 1:
        return LauncherConfig(kind=LauncherKind.LOCAL)
    endpoint = f"{master}:{RDZV_PORT}" if nodes > 1 and master else None
    return LauncherConfig(kind=LauncherKind.TORCHRUN, nproc_per_node=gpus, nnodes=nodes,
                          rdzv_endpoint=endpoint)


def _master_node() -> str | None:
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        return None
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                         text=True, check=False)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else None


try:  # submitit is the optional ``cluster`` extra; the module imports without it
    from submitit.helpers import Checkpointable as _Checkpointable
except ModuleNotFoundError:  # pragma: no cover - exercised only without the extra
    _Checkpointable = object  # type: ignore[assignment,misc]


class StudyRunJob(_Checkpointable):
    """One run (or one sweep of one init) executed inside a job.

    Args:
        profile: the profile (with any added inits), launcher replaced inside the job.
        run: the run; None with ``sweep`` set for a tuning sweep.
        sweep, init: the sweep and init for a sweep job.
        cwd: the study's working directory (relative params paths resolve against it).
        force: re-execute a finished run; a requeued job never forces (it resumes).
        executor: the notebook executor (papermill; tests pass a fast fake).
    """

    def __init__(self, profile: StudyProfile, run: Run | None, cwd: str, *, force: bool = False,
                 executor: Executor | None = None, sweep: SweepConfig | None = None,
                 init: str | None = None, requeue: bool = True) -> None:
        self.profile, self.run, self.cwd, self.force = profile, run, cwd, force
        self.executor, self.sweep, self.init, self.requeue = executor, sweep, init, requeue
        self.attempt = 0

    def __call__(self) -> dict[str, Any]:
        import submitit

        os.chdir(self.cwd)
        self.attempt += 1
        env = submitit.JobEnvironment()
        nodes = env.num_nodes
        if self.run is not None and self.run.notebook not in ("finetune",):
            nodes = 1  # only fine-tuning spans nodes (the others run one process)
        profile = copy.deepcopy(self.profile)
        profile.launcher = inner_launcher(self.profile.launcher, nodes, _master_node())
        if env.node > 0:
            return self._follow(profile)
        runner = StudyRunner(profile, force=self.force, executor=self.executor,
                             echo=lambda line: print(line, flush=True))
        if self.sweep is not None:
            runner.run_sweep(self.sweep, self.init or "")
            outcomes = runner.summary.outcomes
            failed = [o for o in outcomes if o.status == rec.FAILED]
            return {"run": f"{self.sweep.name}-{self.init}", "attempt": self.attempt,
                    "status": rec.FAILED if failed else rec.SUCCESS,
                    "message": "; ".join(o.message for o in failed)}
        outcome = runner.execute(self.run)
        return {**outcome.__dict__, "attempt": self.attempt}

    def _follow(self, profile: StudyProfile) -> dict[str, Any]:
        """Nodes > 0 of a multi-node fine-tuning job: join node 0's torchrun once it has
        written this attempt's ``experiment.yaml``."""
        from .tasks import torchrun_command

        start = time.time()
        exp = Path(profile.work_dir).resolve() / self.run.name / "experiment.yaml"
        while not (exp.is_file() and exp.stat().st_mtime >= start - 5):
            time.sleep(5)
        launcher = {"nnodes": profile.launcher.nnodes,
                    "nproc_per_node": profile.launcher.nproc_per_node,
                    "rdzv_endpoint": profile.launcher.rdzv_endpoint}
        subprocess.run(torchrun_command(launcher, ["train", str(exp)]), check=True)
        return {"run": self.run.name, "status": "follower", "node": socket.gethostname()}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption / time limit: requeue the run to resume."""
        if not self.requeue:
            return None
        from submitit.helpers import DelayedSubmission

        again = copy.copy(self)
        again.force = False  # resume from last.pth, never wipe what the attempt wrote
        return DelayedSubmission(again, *args, **kwargs)


def _waves(runs: list[Run]) -> list[list[Run]]:
    """``runs`` (in topological order) grouped so each run's needs lie in earlier groups."""
    depth: dict[str, int] = {}
    for r in runs:
        depth[r.name] = 1 + max((depth[n] for n in r.needs if n in depth), default=-1)
    return [[r for r in runs if depth[r.name] == d] for d in range(max(depth.values(), default=-1) + 1)]


class SlurmStudyExecutor:
    """Submits a profile's runs as jobs (see the module docstring).

    Args:
        cluster: submitit's cluster ("slurm"; "local" runs jobs as local processes, which is
            how this is tested; None = submitit's choice).
        folder: submitit's logs and pickles (default ``<work_dir>/slurm``).
        poll_s: seconds between job state checks.
    """

    def __init__(self, profile: StudyProfile, *, force: bool = False,
                 executor: Executor | None = None, cluster: str | None = "slurm",
                 folder: str | Path | None = None, poll_s: float = 10.0,
                 echo: Callable[[str], None] = print) -> None:
        import submitit

        self.profile, self.force, self.executor = profile, force, executor
        self.echo, self.poll_s, self.cluster = echo, poll_s, cluster
        self.local = StudyRunner(profile, force=force, executor=executor, echo=lambda _: None)
        self.folder = Path(folder or self.local.work_dir / "slurm")
        self.state_path = self.local.results_dir / STATE_NAME
        self.state: dict[str, Any] = read_json(self.state_path) or {}
        self.submitit = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        self.submitit.update_parameters(**self.parameters())

    def parameters(self, nodes: int | None = None) -> dict[str, Any]:
        """submitit parameters from the profile's launcher (one task per node)."""
        lc = self.profile.launcher
        params: dict[str, Any] = {"timeout_min": lc.time_limit_min, "nodes": nodes or lc.nodes,
                                  "gpus_per_node": lc.gpus_per_node, "tasks_per_node": 1,
                                  "name": f"study-{self.profile.name}"}
        if self.cluster == "slurm":
            if lc.partition:
                params["slurm_partition"] = lc.partition
            if lc.account:
                params["slurm_account"] = lc.account
        return params

    def _save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    def _job(self, job_id: str) -> Any:
        import submitit

        cls = submitit.LocalJob if self.cluster == "local" else submitit.SlurmJob
        return cls(folder=self.folder, job_id=job_id)

    def _submit(self, key: str, job: StudyRunJob, nodes: int) -> Any:
        self.submitit.update_parameters(nodes=nodes, name=f"{self.profile.name}-{key}")
        submitted = self.submitit.submit(job)
        entry = self.state.setdefault(key, {"attempts": 0})
        entry.update(job_id=str(submitted.job_id), state="SUBMITTED", submitted=time.time(),
                     outcome=None)
        entry["attempts"] += 1
        self._save()
        self.echo(f"{key}: submitted job {submitted.job_id}")
        return submitted

    def _reattach(self, key: str) -> Any | None:
        """The job of an earlier invocation when it is still queued or running."""
        entry = self.state.get(key)
        if not entry or not entry.get("job_id") or entry.get("outcome"):
            return None
        job = self._job(entry["job_id"])
        state = str(job.state).upper()
        if state in ACTIVE_STATES or (self.cluster == "local" and state == "FINISHED"):
            self.echo(f"{key}: collecting job {entry['job_id']} from an earlier invocation")
            return job
        return None

    def _collect(self, key: str, job: Any, run: Run | None) -> Outcome:
        while not job.done():
            time.sleep(self.poll_s)
        entry = self.state.setdefault(key, {"attempts": 1})
        try:
            result = job.result()
            outcome = Outcome(key, result["status"], result.get("seconds", 0.0),
                              result.get("message", ""))
        except Exception as err:  # noqa: BLE001 - a lost job (killed, node failure) is a failure
            message = f"job {job.job_id} ended without a result: {str(err).strip()[-500:]}"
            if run is not None and not rec.is_success(self.local.record_of(run.name)):
                rec.write_json_atomic(rec.record_path(self.local.results_dir, run.name),
                                      rec.make_record(run.name, rec.FAILED, error=message,
                                                      parameters=self.local._parameters(run),
                                                      notebook=run.notebook))
            outcome = Outcome(key, rec.FAILED, message=message.splitlines()[-1][:200])
        entry.update(state=str(job.state), outcome=outcome.status)
        self._save()
        self.echo(f"{key}: {outcome.status} (job {job.job_id})")
        return outcome

    def _pre_check(self, run: Run) -> Outcome | None:
        """The runner's semantics decided here, before a job is spent on them."""
        if self.local._cached(run, self.local._parameters(run)):
            return Outcome(run.name, "cached")
        bad = [n for n in run.needs if not rec.is_success(self.local.record_of(n))]
        if bad:
            return self.local.execute(run)  # writes the skipped record, starts nothing
        return None

    def run(self, only: str | None = None) -> StudySummary:
        start = time.perf_counter()
        summary = StudySummary(self.profile.name)
        runs = topological_order(select(expand_runs(self.profile), only))
        requeue = self.profile.launcher.requeue
        for wave in _waves(runs):
            jobs: list[tuple[str, Any, Run]] = []
            for run in wave:
                job = self._reattach(run.name)
                if job is None:
                    done = self._pre_check(run)
                    if done is not None:
                        summary.outcomes.append(done)
                        self.echo(f"{run.name}: {done.status}")
                        continue
                    nodes = self.profile.launcher.nodes if run.notebook == "finetune" else 1
                    job = self._submit(run.name, StudyRunJob(
                        self.profile, run, str(self.local.cwd), force=self.force,
                        executor=self.executor, requeue=requeue), nodes)
                jobs.append((run.name, job, run))
            summary.outcomes += [self._collect(k, j, r) for k, j, r in jobs]
        sweep_jobs = []
        for sweep in self.profile.sweeps:
            for init in sweep.inits:
                key = f"{sweep.name}-{init}"
                if only and not fnmatch.fnmatch(key, only):
                    continue
                job = self._reattach(key) or self._submit(key, StudyRunJob(
                    self.profile, None, str(self.local.cwd), force=self.force,
                    executor=self.executor, sweep=sweep, init=init, requeue=requeue),
                    self.profile.launcher.nodes)
                sweep_jobs.append((key, job))
        summary.outcomes += [self._collect(k, j, None) for k, j in sweep_jobs]
        summary.wall_s = time.perf_counter() - start
        self.echo(summary.text())
        return summary
