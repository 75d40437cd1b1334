"""Study runs as SLURM jobs through ``submitit`` (``launcher: {kind: slurm, ...}``).

Each node of the study graph (``graph.study_nodes``: a run, or one init's tuning sweep, whose
grid depends on results) becomes one job that executes it exactly as ``study run`` does locally
(``StudyRunner.execute`` / ``run_sweep``: same records, fingerprints, skip / force / failure
semantics). Jobs are submitted in waves: a node is submitted once every node it needs has
finished, so a wave is the set of nodes whose needs lie in earlier waves.

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
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitdet_lib.io import read_json, write_json_atomic

from . import records as rec
from .graph import Node, SweepNode, select, study_nodes
from .launcher import LauncherConfig, LauncherKind
from .profile import Run, StudyProfile
from .runner import Executor, Outcome, StudyRunner, StudySummary

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
    """One node of the study graph (a run, or one init's tuning sweep) executed in a job.

    Args:
        profile: the profile (with any added inits); its launcher is replaced inside the job.
        node: the run or sweep node.
        cwd: the study's working directory (relative params paths resolve against it).
        force: re-execute a finished run; a requeued job never forces (it resumes).
        executor: the notebook executor (papermill; tests pass a fast fake).
        results_dir: ``study run --results-dir``.
        requeue: requeue on preemption / time limit.
    """

    def __init__(self, profile: StudyProfile, node: Node, cwd: str, *, force: bool = False,
                 executor: Executor | None = None, results_dir: str | None = None,
                 requeue: bool = True) -> None:
        self.profile, self.node, self.cwd, self.force = profile, node, cwd, force
        self.executor, self.results_dir, self.requeue = executor, results_dir, requeue
        self.attempt = 0

    def __call__(self) -> dict[str, Any]:
        import submitit

        os.chdir(self.cwd)
        self.attempt += 1
        env = submitit.JobEnvironment()
        nodes = env.num_nodes
        if isinstance(self.node, Run) and self.node.notebook != "finetune":
            nodes = 1  # only fine-tuning spans nodes (the others run one process)
        profile = copy.deepcopy(self.profile)
        profile.launcher = inner_launcher(self.profile.launcher, nodes, _master_node())
        runner = StudyRunner(profile, force=self.force, executor=self.executor,
                             echo=lambda line: print(line, flush=True),
                             results_dir=self.results_dir)
        if env.node > 0:
            return self._follow(runner)
        if isinstance(self.node, SweepNode):
            runner.run_sweep(self.node)
            won = runner.winners.get(self.node.name)
            failed = [o.message for o in runner.summary.outcomes if o.status == rec.FAILED]
            return {"run": self.node.name, "attempt": self.attempt,
                    "status": rec.SUCCESS if won is not None else rec.FAILED,
                    "message": "; ".join(failed) or ("" if won else "no sweep run succeeded")}
        outcome = runner.execute(self.node)
        return {**outcome.summary(), "attempt": self.attempt}

    def _follow(self, runner: StudyRunner) -> dict[str, Any]:
        """Nodes > 0 of a multi-node fine-tuning job: join node 0's torchrun once it has
        written this attempt's ``experiment.yaml``."""
        from .tasks import torchrun_command

        if not isinstance(self.node, Run):
            return {"run": self.node.name, "status": "follower"}  # sweeps run on node 0
        start = time.time()
        exp = runner.work_dir / self.node.name / "experiment.yaml"
        while not (exp.is_file() and exp.stat().st_mtime >= start - 5):
            time.sleep(5)
        lc = runner.profile.launcher
        launcher = {"nnodes": lc.nnodes, "nproc_per_node": lc.nproc_per_node,
                    "rdzv_endpoint": lc.rdzv_endpoint}
        subprocess.run(torchrun_command(launcher, ["train", str(exp)]), check=True)
        return {"run": self.node.name, "status": "follower", "node": socket.gethostname()}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption / time limit: requeue the run to resume."""
        if not self.requeue:
            return None
        from submitit.helpers import DelayedSubmission

        again = copy.copy(self)
        again.force = False  # resume from last.pth, never wipe what the attempt wrote
        return DelayedSubmission(again, *args, **kwargs)


def _waves(nodes: list[Node]) -> list[list[Node]]:
    """``nodes`` (needs first) grouped so each node's needs lie in earlier groups."""
    depth: dict[str, int] = {}
    for n in nodes:
        depth[n.name] = 1 + max((depth[m] for m in n.needs if m in depth), default=-1)
    last = max(depth.values(), default=-1)
    return [[n for n in nodes if depth[n.name] == d] for d in range(last + 1)]


class SlurmStudyExecutor:
    """Submits a profile's runs and sweeps as jobs (see the module docstring).

    Args:
        cluster: submitit's cluster ("slurm"; "local" runs jobs as local processes, which is
            how this is tested; None = submitit's choice).
        folder: submitit's logs and pickles (default ``<work_dir>/slurm``).
        poll_s: seconds between job state checks.
        results_dir: ``study run --results-dir``.
    """

    def __init__(self, profile: StudyProfile, *, force: bool = False,
                 executor: Executor | None = None, cluster: str | None = "slurm",
                 folder: str | Path | None = None, poll_s: float = 10.0,
                 echo: Callable[[str], None] = print,
                 results_dir: str | Path | None = None) -> None:
        import submitit

        self.profile, self.force, self.executor = profile, force, executor
        self.echo, self.poll_s, self.cluster = echo, poll_s, cluster
        self.results_dir = str(results_dir) if results_dir else None
        self.local = StudyRunner(profile, force=force, executor=executor, echo=lambda _: None,
                                 results_dir=results_dir)
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

    def _submit(self, node: Node) -> Any:
        spans = isinstance(node, SweepNode) or node.notebook == "finetune"
        self.submitit.update_parameters(nodes=self.profile.launcher.nodes if spans else 1,
                                        name=f"{self.profile.name}-{node.name}")
        submitted = self.submitit.submit(StudyRunJob(
            self.profile, node, str(self.local.cwd), force=self.force, executor=self.executor,
            results_dir=self.results_dir, requeue=self.profile.launcher.requeue))
        entry = self.state.setdefault(node.name, {"attempts": 0})
        entry.update(job_id=str(submitted.job_id), state="SUBMITTED", submitted=time.time(),
                     outcome=None)
        entry["attempts"] += 1
        self._save()
        self.echo(f"{node.name}: submitted job {submitted.job_id}")
        return submitted

    def _reattach(self, name: str) -> Any | None:
        """The job of an earlier invocation when it is still queued or running (or, locally,
        finished with a result not yet collected)."""
        entry = self.state.get(name)
        if not entry or not entry.get("job_id") or entry.get("outcome"):
            return None
        job = self._job(entry["job_id"])
        state = str(job.state).upper()
        if state in ACTIVE_STATES or (self.cluster == "local" and state == "FINISHED"):
            self.echo(f"{name}: collecting job {entry['job_id']} from an earlier invocation")
            return job
        return None

    def _collect(self, node: Node, job: Any) -> Outcome:
        while not job.done():
            time.sleep(self.poll_s)
        entry = self.state.setdefault(node.name, {"attempts": 1})
        try:
            result = job.result()
            outcome = Outcome(node.name, result["status"], result.get("seconds", 0.0),
                              result.get("message", ""))
        except Exception as err:  # noqa: BLE001 - a lost job (killed, node failure) is a failure
            message = f"job {job.job_id} ended without a result: {str(err).strip()[-500:]}"
            if isinstance(node, Run) and not rec.is_success(self.local.record_of(node.name)):
                rec.write_json_atomic(rec.record_path(self.local.results_dir, node.name),
                                      rec.make_record(node.name, rec.FAILED, error=message,
                                                      parameters=self.local._parameters(node),
                                                      notebook=node.notebook))
            outcome = Outcome(node.name, rec.FAILED, message=message.splitlines()[-1][:200])
        if isinstance(node, SweepNode):  # later runs tuned by it read its winner
            self.local.winners.pop(node.name, None)
        entry.update(state=str(job.state), outcome=outcome.status)
        self._save()
        self.echo(f"{node.name}: {outcome.status} (job {job.job_id})")
        return outcome

    def _pre_check(self, node: Node, sweeps: dict[str, SweepNode]) -> Outcome | None:
        """The runner's semantics decided here, before a job is spent: a current record is
        reused, a node whose needs did not succeed is skipped (the runner writes the record)."""
        for need in node.needs:  # a sweep's winner, replayed from its records
            if need in sweeps and need not in self.local.winners:
                n = sweeps[need]
                self.local.winners[need] = self.local._replay_sweep(n.sweep.name, n.init)
        bad = [n for n in node.needs if not self.local._succeeded(n)]
        if isinstance(node, SweepNode):
            return Outcome(node.name, rec.SKIPPED, message=f"needs {bad}") if bad else None
        if not self.force:
            state = StudyRunner(self.profile, dry_run=True, echo=lambda _: None,
                                results_dir=self.results_dir).execute(node)
            if state.status == rec.SUCCESS:
                return Outcome(node.name, "cached")
        return self.local.execute(node) if bad else None  # execute only writes the skip

    def run(self, only: str | None = None, stage: str | None = None) -> StudySummary:
        start = time.perf_counter()
        summary = StudySummary(self.profile.name)
        nodes = select(study_nodes(self.profile), only, stage)
        sweeps = {n.name: n for n in study_nodes(self.profile) if isinstance(n, SweepNode)}
        for wave in _waves(nodes):
            jobs: list[tuple[Node, Any]] = []
            for node in wave:
                job = self._reattach(node.name)
                if job is None:
                    done = self._pre_check(node, sweeps)
                    if done is not None:
                        summary.outcomes.append(done)
                        self.echo(f"{node.name}: {done.status}")
                        continue
                    job = self._submit(node)
                jobs.append((node, job))
            summary.outcomes += [self._collect(node, job) for node, job in jobs]
        summary.wall_s = time.perf_counter() - start
        self.echo(summary.text())
        return summary
