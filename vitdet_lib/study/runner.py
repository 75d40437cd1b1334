"""``study run``: execute a profile's runs through papermill, resumably.

Every run ends with a record (``records``): the experiment notebook writes ``success`` at its
end; the runner writes ``failed`` (with the traceback) when the notebook raises, and
``skipped`` when a run it needs did not succeed. A run with a success record whose parameters
match is not executed again unless forced, so re-running a study only does what is missing.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdet_lib.config import to_dict
from vitdet_lib.io import jsonable

from . import records as rec
from .profile import REPO_ROOT, Run, StudyProfile, SweepConfig, expand_runs, make_run
from .sweep import best_point, widen_grid

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


@dataclass
class Outcome:
    run: str
    status: str  # success | failed | skipped | cached
    seconds: float = 0.0
    message: str = ""


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
                             ("success", "cached", "failed", "skipped"))]
        for o in self.outcomes:
            if o.status in (rec.FAILED, rec.SKIPPED):
                lines.append(f"  {o.status:8s} {o.run}: {o.message}")
        return "\n".join(lines)


def topological_order(runs: list[Run]) -> list[Run]:
    """``runs`` with every run after the runs it needs; otherwise the profile's order."""
    by_name = {r.name: r for r in runs}
    done: set[str] = set()
    order: list[Run] = []

    def visit(run: Run, stack: tuple[str, ...]) -> None:
        if run.name in done:
            return
        if run.name in stack:
            raise ValueError(f"cycle of needs: {' -> '.join((*stack, run.name))}")
        for need in run.needs:
            if need in by_name:
                visit(by_name[need], (*stack, run.name))
        done.add(run.name)
        order.append(run)

    for r in runs:
        visit(r, ())
    return order


def select(runs: list[Run], pattern: str | None) -> list[Run]:
    """Runs matching the glob ``pattern`` plus (transitively) the runs they need."""
    if not pattern:
        return runs
    by_name = {r.name: r for r in runs}
    keep: set[str] = set()
    todo = [r.name for r in runs if fnmatch.fnmatch(r.name, pattern)]
    while todo:
        name = todo.pop()
        if name not in keep and name in by_name:
            keep.add(name)
            todo.extend(by_name[name].needs)
    return [r for r in runs if r.name in keep]


def fashion_available() -> bool:
    from vitdet_lib.data.fashion import fashion_mnist_dir

    return (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file()


class StudyRunner:
    """Executes runs of one profile; see the module docstring for the record semantics.

    Args:
        force: execute even runs with a success record.
        executor: how a notebook is executed (papermill; tests pass a fake).
        echo: receives the progress lines.
    """

    def __init__(self, profile: StudyProfile, *, force: bool = False,
                 executor: Executor | None = None, echo: Callable[[str], None] = print,
                 notebooks_dir: Path = NOTEBOOKS_DIR) -> None:
        self.profile = profile
        self.force = force
        self.executor = executor or papermill_executor
        self.echo = echo
        self.notebooks_dir = Path(notebooks_dir)
        self.cwd = Path.cwd()
        self.results_dir = (self.cwd / profile.results_dir).resolve()
        self.work_dir = (self.cwd / profile.work_dir).resolve()
        self.summary = StudySummary(profile.name)
        self.use_fallback = bool(profile.data_fallback) and not fashion_available()
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
        return params

    def _cached(self, run: Run, params: dict[str, Any]) -> bool:
        old = self.record_of(run.name)
        if self.force or not rec.is_success(old):
            return False
        stored = old.get("parameters", {})
        keys = set(run.parameters)  # what the profile decides; paths and flags may differ
        return all(jsonable(params[k]) == stored.get(k) for k in keys)

    def execute(self, run: Run) -> Outcome:
        self._total += 1
        prefix = f"[{self._total}/{self._expected}]" if self._expected else f"[{self._total}]"
        params = self._parameters(run)
        path = rec.record_path(self.results_dir, run.name)
        if self._cached(run, params):
            outcome = Outcome(run.name, "cached")
            self.echo(f"{prefix} {run.name}: done before, skipped")
            return self._add(outcome)
        bad = [n for n in run.needs if not rec.is_success(self.record_of(n))]
        if bad:
            msg = f"needs {bad}, which did not succeed"
            rec.write_json_atomic(path, rec.make_record(run.name, rec.SKIPPED, parameters=params,
                                                        reason=msg, notebook=run.notebook))
            self.echo(f"{prefix} {run.name}: skipped ({msg})")
            return self._add(Outcome(run.name, rec.SKIPPED, message=msg))
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
        if error is None and not rec.is_success(rec.read_record(path)):
            error = f"{notebook.name} finished without writing a success record to {path}"
        if error is not None:
            rec.write_json_atomic(path, rec.make_record(
                run.name, rec.FAILED, parameters=params, error=error, notebook=run.notebook,
                executed_notebook=str(output), timings={"wall_s": seconds}))
            last = error.strip().splitlines()[-1][:200]
            self.echo(f"{prefix} {run.name}: FAILED after {seconds:.1f} s: {last}")
            return self._add(Outcome(run.name, rec.FAILED, seconds, last))
        self.echo(f"{prefix} {run.name}: ok ({seconds:.1f} s)")
        return self._add(Outcome(run.name, rec.SUCCESS, seconds))

    def _add(self, outcome: Outcome) -> Outcome:
        self.summary.outcomes.append(outcome)
        return outcome

    # ------------------------------------------------------------------ sweeps

    def sweep_grid_run(self, sweep: SweepConfig, init: str, lr: float, wd: float) -> Run:
        params = {**sweep.parameters, "lr": lr, "weight_decay": wd, "drop_path": 0.0,
                  "stage": "grid", "sweep": sweep.name}
        return make_run(self.profile, f"{sweep.name}-{init}-lr{lr:.3g}-wd{wd:.3g}", "finetune",
                        params, init=init, size=sweep.size, serves=("HP",))

    def sweep_dp_run(self, sweep: SweepConfig, init: str, lr: float, wd: float, dp: float
                     ) -> Run:
        params = {**sweep.parameters, "lr": lr, "weight_decay": wd, "drop_path": dp,
                  "stage": "drop_path", "sweep": sweep.name}
        params["overrides"] = [*(params.get("overrides") or []), *sweep.drop_path_overrides]
        return make_run(self.profile, f"{sweep.name}-{init}-dp{dp:g}", "finetune", params,
                        init=init, size=sweep.size, serves=("HP",))

    def _ap(self, run: Run) -> float | None:
        r = self.record_of(run.name)
        return rec.finite(r.get("metrics", {}).get("bbox/AP")) if rec.is_success(r) else None

    def run_sweep(self, sweep: SweepConfig, init: str) -> None:
        lrs, wds = sorted(sweep.lr), sorted(sweep.weight_decay)
        ap: dict[tuple[float, float], float | None] = {}
        for widening in range(sweep.max_widenings + 1):
            for lr in lrs:
                for wd in wds:
                    if (lr, wd) not in ap:
                        run = self.sweep_grid_run(sweep, init, lr, wd)
                        self.execute(run)
                        ap[(lr, wd)] = self._ap(run)
            wider = widen_grid(ap, lrs, wds, sweep.factor)
            if wider is None:
                break
            if widening == sweep.max_widenings:
                self.echo(f"{sweep.name}-{init}: best on the border, but max_widenings="
                          f"{sweep.max_widenings} reached")
                break
            lrs, wds = wider
            self.echo(f"{sweep.name}-{init}: best on the border, widening to lr {lrs} x wd {wds}")
        best = best_point(ap)
        for dp in sweep.drop_path:
            if best is None:
                run = self.sweep_dp_run(sweep, init, float("nan"), float("nan"), dp)
                run = Run(run.name, run.notebook, run.parameters,
                          needs=tuple(self.sweep_grid_run(sweep, init, lr, wd).name
                                      for lr in lrs for wd in wds), serves=run.serves)
            else:
                run = self.sweep_dp_run(sweep, init, *best, dp)
            self.execute(run)

    # ------------------------------------------------------------------ all

    def run(self, only: str | None = None) -> StudySummary:
        start = time.perf_counter()
        if bool(self.profile.data_fallback) and self.use_fallback:
            self.echo("note: Fashion-MNIST is not installed (set VITDET_FASHION_MNIST_DIR or "
                      "install dataset-fashion-mnist); using the procedural shape scenes")
        sweeps = [(s, i) for s in self.profile.sweeps for i in s.inits
                  if not only or fnmatch.fnmatch(f"{s.name}-{i}", only)
                  or fnmatch.fnmatch(f"{s.name}-{i}-x", only)]
        all_runs = expand_runs(self.profile)
        chosen = {r.name for r in select(all_runs, only)}
        for sweep, init in sweeps:  # a selected sweep brings its pre-training run along
            needs = self.sweep_grid_run(sweep, init, 1.0, 1.0).needs
            for need in needs:
                chosen |= {r.name for r in select(all_runs, need)}
        runs = topological_order([r for r in all_runs if r.name in chosen])
        grid = sum(len(s.lr) * len(s.weight_decay) + len(s.drop_path) for s, _ in sweeps)
        self._expected = len(runs) + grid  # grows when a sweep widens
        # the pre-training runs a sweep needs are among ``runs`` (or selected with them)
        for run in runs:
            self.execute(run)
        for sweep, init in sweeps:
            self.run_sweep(sweep, init)
        self.summary.wall_s = time.perf_counter() - start
        rec.write_json_atomic(self.results_dir / "summary.json", {
            "profile": self.profile.name, "wall_s": self.summary.wall_s,
            "outcomes": [o.__dict__ for o in self.summary.outcomes],
            "provenance": rec.provenance()})
        self.echo(self.summary.text())
        return self.summary


def run_study(profile: StudyProfile, *, only: str | None = None, force: bool = False,
              executor: Executor | None = None, echo: Callable[[str], None] = print
              ) -> StudySummary:
    return StudyRunner(profile, force=force, executor=executor, echo=echo).run(only)


def run_report(profile: StudyProfile, *, executor: Executor | None = None,
               echo: Callable[[str], None] = print) -> Path:
    """Render the aggregating notebook(s) into ``<results_dir>/report/``."""
    executor = executor or papermill_executor
    cwd = Path.cwd()
    results_dir = (cwd / profile.results_dir).resolve()
    out = results_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    executor(NOTEBOOKS_DIR / "report.ipynb", out / "report.ipynb",
             {"profile": profile.name, "results_dir": str(results_dir), "out_dir": str(out),
              "note": profile.note}, cwd)
    echo(f"report of {profile.name} rendered into {out} ({time.perf_counter() - start:.1f} s)")
    return out
