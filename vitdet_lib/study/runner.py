"""``study run``: execute a profile's runs through papermill, resumably.

Every run ends with a record (``records``): the experiment notebook writes ``success`` at its
end; the runner writes ``failed`` (with the traceback) when the notebook raises, and
``skipped`` when a run it needs did not succeed. The runner adds the run's fingerprint
(``fingerprint``) to every record. A success record is reused only when its fingerprint matches
the current one; otherwise the run is stale, the runner says why and runs it again.

Sweeps are nodes of the same dependency graph as runs: a run ``tuned_by`` a sweep waits for the
sweep of its init and takes its winner's lr / weight decay / drop path (chosen on the
validation split). ``dry_run=True`` walks the same graph without executing anything: every
run's state (success, stale, failed, skipped, no run) for the report.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdet_lib.config import ConfigError, to_dict
from vitdet_lib.errors import CheckpointError

from . import records as rec
from .fingerprint import fingerprint, stale_reasons
from .graph import SweepNode, select, study_nodes
from .profile import (
    REPO_ROOT,
    Run,
    StudyProfile,
    find_sweep,
    sweep_node,
)
from .readme_sync import update_readme
from .sweep import SELECTION_METRIC, dp_reuses_grid, walk_sweep

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# (notebook, executed output, parameters, working directory); raises when the notebook fails
Executor = Callable[[Path, Path, dict[str, Any], Path], None]


def papermill_executor(notebook: Path, output: Path, parameters: dict[str, Any],
                       cwd: Path) -> None:
    """Execute with papermill; the executed notebook (also a failed one) lands at ``output``."""
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.stem}.tmp.ipynb")
    try:
        pm.execute_notebook(str(notebook), str(tmp), parameters=parameters, cwd=str(cwd),
                            kernel_name="python3", progress_bar=False, log_output=False)
    finally:
        if tmp.exists():
            os.replace(tmp, output)


STALE, NO_RUN = "stale", "no run"


@dataclass
class Outcome:
    run: str
    status: str  # success | cached | failed | skipped (executed); + stale | no run (dry run)
    seconds: float = 0.0
    message: str = ""
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)  # the run's, as expected

    def summary(self) -> dict[str, Any]:
        return {"run": self.run, "status": self.status, "seconds": self.seconds,
                "message": self.message}


@dataclass
class StudySummary:
    profile: str
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def text(self) -> str:
        lines = [f"study {self.profile}: {len(self.outcomes)} runs in {self.wall_s:.0f} s: "
                 + ", ".join(f"{self.count(s)} {s}" for s in
                             ("success", "cached", "failed", "skipped", STALE, NO_RUN)
                             if self.count(s) or s in ("success", "failed"))]
        for o in self.outcomes:
            if o.status in (rec.FAILED, rec.SKIPPED, STALE):
                lines.append(f"  {o.status:8s} {o.run}: {o.message}")
        return "\n".join(lines)


def fashion_available() -> bool:
    from vitdet_lib.data.fashion import fashion_mnist_dir

    return (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file()


class StudyRunner:
    """Executes (or, with ``dry_run``, inspects) the runs of one profile.

    Args:
        force: execute even runs whose record is current.
        dry_run: execute nothing; every outcome is the run's state from its record.
        executor: how a notebook is executed (papermill; tests pass a fake).
        echo: receives the progress lines.
        results_dir, work_dir: override the profile's folders (e.g. a scratch copy of a study
            whose shipped records must stay untouched).
    """

    def __init__(self, profile: StudyProfile, *, force: bool = False, dry_run: bool = False,
                 executor: Executor | None = None, echo: Callable[[str], None] = print,
                 notebooks_dir: Path = NOTEBOOKS_DIR, results_dir: str | Path | None = None,
                 work_dir: str | Path | None = None) -> None:
        if work_dir is None and results_dir is not None:
            work_dir = Path(results_dir) / "work"
        # the profile's own folders move too: init checkpoints are paths inside work_dir
        profile = dataclasses.replace(profile, results_dir=str(results_dir or profile.results_dir),
                                      work_dir=str(work_dir or profile.work_dir))
        self.profile = profile
        self.force = force and not dry_run
        self.dry_run = dry_run
        self.executor = executor or papermill_executor
        self.echo = echo
        self.notebooks_dir = Path(notebooks_dir)
        self.cwd = Path.cwd()
        self.results_dir = (self.cwd / profile.results_dir).resolve()
        self.work_dir = (self.cwd / profile.work_dir).resolve()
        self.summary = StudySummary(profile.name)
        self.use_fallback = bool(profile.data_fallback) and not fashion_available()
        self.data_source = "shapes" if self.use_fallback else "fashion"
        self.winners: dict[str, tuple[float, float, float] | None] = {}
        self._total = 0
        self._expected = 0

    # ------------------------------------------------------------------ one run

    def record_of(self, name: str) -> dict[str, Any] | None:
        return rec.read_record(rec.record_path(self.results_dir, name))

    def _parameters(self, run: Run) -> dict[str, Any]:
        params = dict(run.parameters)
        params.update(run_name=run.name, profile=self.profile.name, note=self.profile.note,
                      results_dir=str(self.results_dir),
                      record_path=str(rec.record_path(self.results_dir, run.name)),
                      work_dir=str(self.work_dir / run.name), fresh=self.force,
                      torch_threads=self.profile.torch_threads,
                      launcher=to_dict(self.profile.launcher),
                      fallback_overrides=list(self.profile.data_fallback) if self.use_fallback
                      else [])
        if self.profile.ship_checkpoints and run.notebook == "pretrain":
            params["checkpoints_dir"] = str(self.results_dir / "checkpoints")
        return params

    def _fingerprint(self, run: Run, params: dict[str, Any]) -> dict[str, Any]:
        source = self.profile.inits.get(params.get("init") or "")
        upstream = self.record_of(source.pretrain_run) if source and source.pretrain_run else None
        return fingerprint(params, repo_root=REPO_ROOT, data_source=self.data_source,
                           upstream=upstream)

    def _tuned(self, run: Run) -> Run | str:
        """``run`` with its sweep winner's lr / wd / dp, or why it cannot run."""
        if run.tuned_by is None:
            return run
        init = run.parameters.get("tuned_init") or run.parameters["init"]
        node = sweep_node(run.tuned_by, init)
        if node not in self.winners:
            self.winners[node] = self._replay_sweep(run.tuned_by, init)
        best = self.winners[node]
        if best is None:
            return f"its sweep {node} has no successful run (run --stage of the sweep first)"
        won = dict(zip(("lr", "weight_decay", "drop_path"), best))
        # e.g. the paper's ViT-L takes ViT-B's lr and wd but its own drop path
        keys = run.parameters.get("tuned_keys") or list(won)
        return Run(run.name, run.notebook, {**run.parameters, **{k: won[k] for k in keys}},
                   run.needs, run.serves, run.stage, run.tuned_by)

    def _state(self, run: Run, fp: dict[str, Any]) -> tuple[str, str]:
        """``(status, why)`` of ``run``'s record against its current fingerprint ``fp``."""
        old = self.record_of(run.name)
        if old is None:
            return NO_RUN, ""
        if old.get("status") != rec.SUCCESS:
            return old.get("status", rec.FAILED), old.get("reason") or _last_line(
                old.get("error", ""))
        reasons = stale_reasons(old.get("fingerprint"), fp,
                                code=self.profile.stale_on_code_change)
        return (STALE, "; ".join(reasons)) if reasons else (rec.SUCCESS, "")

    def execute(self, run: Run) -> Outcome:
        self._total += 1
        prefix = f"[{self._total}/{self._expected}]" if self._expected else f"[{self._total}]"
        tuned = self._tuned(run)
        path = rec.record_path(self.results_dir, run.name)
        if isinstance(tuned, str):
            if self.dry_run:  # the sweep has not decided yet: this run cannot be current
                old = self.record_of(run.name) or {}
                status = STALE if old.get("status") == rec.SUCCESS else old.get("status", NO_RUN)
                return self._add(Outcome(run.name, status, message=tuned,
                                         parameters=self._parameters(run)))
            return self._skip(run, self._parameters(run), tuned, prefix)
        run = tuned
        params = self._parameters(run)
        fp = self._fingerprint(run, params)  # what the run depends on, as it starts
        state, why = self._state(run, fp)
        if self.dry_run:
            return self._add(Outcome(run.name, state, message=why, parameters=params))
        if state == rec.SUCCESS and not self.force:
            self.echo(f"{prefix} {run.name}: done before, skipped")
            return self._add(Outcome(run.name, "cached"))
        bad = [n for n in run.needs if not self._succeeded(n)]
        if bad:
            return self._skip(run, params, f"needs {bad}, which did not succeed", prefix)
        if state == STALE:
            self.echo(f"{prefix} {run.name}: stale ({why}), running again")
        path.unlink(missing_ok=True)  # a stale record must not pass for this run's
        if self.force:
            shutil.rmtree(self.work_dir / run.name, ignore_errors=True)
        notebook = self.notebooks_dir / f"{run.notebook}.ipynb"
        output = self.results_dir / "notebooks" / f"{run.name}.ipynb"
        self.echo(f"{prefix} {run.name}: running {notebook.name} ...")
        start = time.perf_counter()
        error = None
        try:
            self.executor(notebook, output, params, self.cwd)
        except Exception:  # noqa: BLE001 - any failure of one run is recorded, not raised
            error = traceback.format_exc()
        seconds = time.perf_counter() - start
        record = rec.read_record(path)
        if error is None and not rec.is_success(record):
            error = f"{notebook.name} finished without writing a success record to {path}"
        if error is not None:
            rec.write_json_atomic(path, rec.make_record(
                run.name, rec.FAILED, parameters=params, error=error, notebook=run.notebook,
                executed_notebook=str(output), timings={"wall_s": seconds}, fingerprint=fp))
            last = _last_line(error)
            self.echo(f"{prefix} {run.name}: FAILED after {seconds:.1f} s: {last}")
            return self._add(Outcome(run.name, rec.FAILED, seconds, last))
        rec.write_json_atomic(path, {**record, "fingerprint": fp})
        self.echo(f"{prefix} {run.name}: ok ({seconds:.1f} s)")
        return self._add(Outcome(run.name, rec.SUCCESS, seconds))

    def _succeeded(self, name: str) -> bool:
        if name in self.winners:  # a sweep node
            return self.winners[name] is not None
        return rec.is_success(self.record_of(name))

    def _skip(self, run: Run, params: dict[str, Any], why: str, prefix: str) -> Outcome:
        if not self.dry_run:
            rec.write_json_atomic(rec.record_path(self.results_dir, run.name), rec.make_record(
                run.name, rec.SKIPPED, parameters=params, reason=why, notebook=run.notebook))
            self.echo(f"{prefix} {run.name}: skipped ({why})")
        return self._add(Outcome(run.name, rec.SKIPPED, message=why, parameters=params))

    def _add(self, outcome: Outcome) -> Outcome:
        self.summary.outcomes.append(outcome)
        return outcome

    # ------------------------------------------------------------------ sweeps

    def _val_ap(self, name: str) -> float | None:
        r = self.record_of(name)
        return rec.finite((r.get("metrics") or {}).get(SELECTION_METRIC)) \
            if rec.is_success(r) else None

    def run_sweep(self, node: SweepNode) -> None:
        def execute(run: Run) -> float | None:
            status = self.execute(run).status
            # a dry run follows the recorded results, stale ones too, to show what depends on
            # them; a real run only follows results that are current
            current = (rec.SUCCESS, "cached", STALE) if self.dry_run else (rec.SUCCESS, "cached")
            return self._val_ap(run.name) if status in current else None

        bad = [n for n in node.needs if not self._succeeded(n)]
        if bad and not self.dry_run:
            self.echo(f"{node.name}: skipped (needs {bad}, which did not succeed)")
            self.winners[node.name] = None
            return
        self.winners[node.name] = walk_sweep(self.profile, node.sweep, node.init, execute,
                                             self.echo)

    def _replay_sweep(self, sweep_name: str, init: str) -> tuple[float, float, float] | None:
        """A sweep's winner from its records alone (nothing executed, nothing counted)."""
        sweep = find_sweep(self.profile, sweep_name, init)

        def read(run: Run) -> float | None:
            return self._val_ap(run.name)

        return walk_sweep(self.profile, sweep, init, read, echo=lambda _: None)

    # ------------------------------------------------------------------ all

    def run(self, only: str | None = None, stage: str | None = None) -> StudySummary:
        start = time.perf_counter()
        if self.use_fallback and not self.dry_run:
            self.echo("note: Fashion-MNIST is not installed (set VITDET_FASHION_MNIST_DIR or "
                      "install dataset-fashion-mnist); using the procedural shape scenes")
        nodes = select(study_nodes(self.profile), only, stage)
        if stage and not nodes:
            stages = sorted({n.stage for n in study_nodes(self.profile) if n.stage})
            raise ConfigError(f"profile {self.profile.name} has no stage {stage!r} "
                              f"(stages: {stages})")
        self._expected = sum(len(n.sweep.lr) * len(n.sweep.weight_decay) + len(n.sweep.drop_path)
                             - dp_reuses_grid(n.sweep) if isinstance(n, SweepNode) else 1
                             for n in nodes)
        for node in nodes:
            if isinstance(node, SweepNode):
                self.run_sweep(node)
            else:
                self.execute(node)
        self.summary.wall_s = time.perf_counter() - start
        if not self.dry_run:
            if self.profile.ship_checkpoints:
                self._ship_detector()
            self._write_summary()
            self.echo(self.summary.text())
        return self.summary

    def _ship_detector(self) -> None:
        """Keep ``checkpoints/detector.pth`` the best Table 1 / Figure 2 recipe run's
        (``ship.py``); a failure here is reported, never fatal to the runs already done."""
        from .ship import ship_best_detector

        try:
            # only current records: a stale one (its sweep or pre-training changed) never ships
            states = study_state(self.profile, self.results_dir)
            ship_best_detector(self.results_dir, {n for n, o in states.items()
                                                  if o.status == rec.SUCCESS}, self.echo)
        except (OSError, CheckpointError) as err:
            self.echo(f"ship: the best detector was not exported: {err}")

    def _write_summary(self) -> None:
        """Merge this invocation's outcomes into ``summary.json`` (a partial run, e.g.
        ``--only`` or ``--stage``, keeps the other runs' entries)."""
        path = self.results_dir / "summary.json"
        old = rec.read_record(path) or {}
        merged = {o["run"]: o for o in old.get("outcomes", []) if isinstance(o, dict)}
        merged.update({o.run: o.summary() for o in self.summary.outcomes})
        invocations = [*old.get("invocations", []),
                       {"wall_s": self.summary.wall_s, "runs": len(self.summary.outcomes),
                        "provenance": rec.provenance()}]
        rec.write_json_atomic(path, {"profile": self.profile.name,
                                     "outcomes": list(merged.values()),
                                     "invocations": invocations[-50:]})


def _last_line(text: str) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:200] if lines else ""


def run_study(profile: StudyProfile, *, only: str | None = None, stage: str | None = None,
              force: bool = False, executor: Executor | None = None,
              echo: Callable[[str], None] = print, results_dir: str | Path | None = None
              ) -> StudySummary:
    return StudyRunner(profile, force=force, executor=executor, echo=echo,
                       results_dir=results_dir).run(only, stage)


def study_state(profile: StudyProfile, results_dir: str | Path | None = None
                ) -> dict[str, Outcome]:
    """Every run of the profile (sweep runs as far as their records decide them) with its
    state: success (current), stale, failed, skipped, no run."""
    summary = StudyRunner(profile, dry_run=True, echo=lambda _: None,
                          results_dir=results_dir).run()
    return {o.run: o for o in summary.outcomes}


def run_report(profile: StudyProfile, *, executor: Executor | None = None,
               echo: Callable[[str], None] = print, results_dir: str | Path | None = None,
               add_inits: tuple[str, ...] | list[str] = (), add_init_all: bool = False
               ) -> Path:
    """Render the aggregating notebook into ``<results_dir>/report/``; ``add_inits``: the
    ``--add-init`` specs of the study (``add_init.py``), so their runs count as the profile's."""
    executor = executor or papermill_executor
    cwd = Path.cwd()
    results = (cwd / (results_dir or profile.results_dir)).resolve()
    out = results / "report"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    executor(NOTEBOOKS_DIR / "report.ipynb", out / "report.ipynb",
             {"profile": profile.name, "results_dir": str(results), "out_dir": str(out),
              "note": profile.note, "add_inits": list(add_inits), "add_init_all": add_init_all},
             cwd)
    echo(f"report of {profile.name} rendered into {out} ({time.perf_counter() - start:.1f} s)")
    # only the profile's own results (not a scratch --results-dir) may speak for the README
    own = (REPO_ROOT / profile.results_dir).resolve() == results
    if own and not add_inits and update_readme(REPO_ROOT / "README.md", profile.name, out,
                                               REPO_ROOT):
        echo(f"README.md: the {profile.name} study's findings and stage times updated")
    return out
