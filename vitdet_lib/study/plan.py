"""``study plan``: a study's run matrix, every input checked, and what it will cost.

:func:`plan` expands the profile (static runs plus the first grid of each tuning sweep),
loads each run's experiment exactly as the notebook will (``tasks.load_run_experiment``),
validates every input at once (``validate``), and prices each fine-tuning run in device-hours
from one measured training step of its own detector (``cost``). ``study run`` performs the same
validation (without the timing) and refuses to start when anything is wrong.

    device-hours = iterations x (batch_size / batch_per_device) x step seconds / 3600
    wall hours   = device-hours / devices      (communication not counted)
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitdet_lib.config import ConfigError

from . import cost
from .profile import Run, StudyProfile
from .validate import Validator

# notebook parameters that shape the experiment config (``tasks.experiment_overrides``)
_EXPERIMENT_KEYS = ("size_overrides", "init_kind", "init_checkpoint", "init_overrides",
                    "overrides", "lr", "weight_decay", "drop_path", "epochs", "seed")


@dataclass
class PlanRow:
    """One run of the matrix; cost fields are None where not priced (see ``note``)."""

    run: str
    notebook: str
    serves: list[str]
    init: str | None = None
    init_kind: str | None = None
    size: str | None = None
    model: str = ""
    image_size: int | None = None
    epochs: float | None = None
    iterations: int | None = None
    batch_size: int | None = None
    batch_per_device: int | None = None
    devices: int = 1
    step_s: float | None = None
    step_source: str = ""
    device_hours: dict[str, float] = field(default_factory=dict)
    wall_hours: float | None = None
    params: int | None = None  # detector parameters (the checkpoint size)
    checkpoint_gb: float | None = None
    note: str = ""


@dataclass
class Plan:
    profile: str
    rows: list[PlanRow]
    problems: list[str]
    devices: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    checkpoints: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _expand(profile: StudyProfile, only: str | None, stage: str | None) -> list[Run]:
    """The selected runs: static runs as they are (a run ``tuned_by`` a sweep gets its lr / wd /
    drop path when the sweep has decided; the params file's values stand in here), and each
    sweep's first lr x wd grid plus its drop-path runs at the grid's middle point (widening
    adds runs)."""
    from .graph import SweepNode, select, study_nodes
    from .sweep import sweep_dp_run, sweep_grid_run

    out: list[Run] = []
    for node in select(study_nodes(profile), only, stage):
        if not isinstance(node, SweepNode):
            out.append(node)
            continue
        s, init = node.sweep, node.init
        out += [sweep_grid_run(profile, s, init, lr, wd) for lr in s.lr for wd in s.weight_decay]
        mid_lr = sorted(s.lr)[len(s.lr) // 2]
        mid_wd = sorted(s.weight_decay)[len(s.weight_decay) // 2]
        out += [sweep_dp_run(profile, s, init, mid_lr, mid_wd, dp) for dp in s.drop_path]
    return out


def _model_text(cfg: Any) -> str:
    b, d = cfg.model.backbone, cfg.model.detector
    scale = "" if d.multi_scale else ", single-scale"
    return (f"ViT {b.embed_dim}w {b.depth}d p{b.patch_size} "
            f"{getattr(b.attention, 'value', b.attention)}{scale}")


def _fallback(profile: StudyProfile) -> list[str]:
    from .runner import fashion_available

    return list(profile.data_fallback) if profile.data_fallback and not fashion_available() else []


def plan(profile: StudyProfile, *, full: bool = False, measure: bool = True,
         only: str | None = None, stage: str | None = None,
         cache_dir: str | Path = cost.DEFAULT_CACHE, steps: int = 2,
         out_dir: str | Path | None = None, results_dir: str | Path | None = None,
         echo: Callable[[str], None] = print) -> Plan:
    """Expand, validate and price ``profile``.

    Args:
        full: check every referenced image file (default: a sample per annotation file).
        measure: time training steps here for the cost (skipped when any input is wrong).
        only, stage: the runs ``study run --only/--stage`` would execute.
        out_dir: a folder the plan will be written to (checked for writability).
        results_dir: ``study run --results-dir`` (records there, checkpoints under DIR/work).
    """
    from .tasks import load_run_experiment

    runs = _expand(profile, only, stage)
    fallback = _fallback(profile)
    v = Validator(full=full)
    work_dir = Path(results_dir) / "work" if results_dir else profile.work_dir
    for folder, what in ((results_dir or profile.results_dir, "results_dir"),
                         (work_dir, "work_dir"),
                         *(((out_dir, "plan output folder"),) if out_dir else ())):
        v.writable(folder, what)
    devices = v.launcher(profile.launcher, "auto")
    rows, configs = [], {}
    for run in runs:
        p = run.parameters
        row = PlanRow(run.name, run.notebook, list(run.serves), p.get("init"), p.get("init_kind"),
                      p.get("size"), devices=devices)
        rows.append(row)
        if run.notebook == "pretrain":
            _pretrain_row(row, p, v)
            continue
        if "params" not in p:
            row.note = "analysis of other runs' records"
            continue
        kwargs = {k: p[k] for k in _EXPERIMENT_KEYS if k in p}
        if run.notebook != "finetune":
            kwargs = {k: v_ for k, v_ in kwargs.items() if k in ("size_overrides", "overrides")}
        try:
            cfg = load_run_experiment(p["params"], fallback_overrides=fallback, **kwargs)
        except ConfigError as err:
            v.problems.add(f"params {p['params']} with the run's overrides: {err}", run.name)
            continue
        row.model, row.image_size = _model_text(cfg), cfg.model.detector.image_size
        if run.notebook != "finetune":
            row.note = "measurement run (untrained models), minutes"
            continue
        t = cfg.train
        row.epochs, row.batch_size, row.batch_per_device = (t.epochs, t.batch_size,
                                                             t.batch_per_device)
        num_train = v.experiment_data(cfg, run.name)
        if t.max_iters is not None:
            row.iterations = t.max_iters
        elif num_train is not None:
            from vitdet_lib.engine.schedule import iterations_for_epochs

            row.iterations = iterations_for_epochs(t.epochs, num_train, t.batch_size)
        producer = _producer(profile, row.init)
        if producer and producer in run.needs:
            row.note = f"checkpoint produced by run {producer}"
        else:
            v.checkpoint(cfg, run.name)
        configs[run.name] = cfg
    result = Plan(profile.name, rows, v.problems.lines(),
                  data={k: asdict(i) for k, i in v.data.items()}, checkpoints=v.checkpoints)
    if measure and result.ok:
        _price(result, configs, cache_dir, steps, echo)
    elif measure:
        for row in rows:
            if row.run in configs:
                row.note = (row.note + "; " if row.note else "") + "not priced: fix the problems"
    return result


def _producer(profile: StudyProfile, init: str | None) -> str | None:
    src = profile.inits.get(init) if init else None
    return src.pretrain_run if src and src.checkpoint else None


def _pretrain_row(row: PlanRow, p: dict[str, Any], v: Validator) -> None:
    from vitdet_lib.pretrain.commands import default_params
    from vitdet_lib.pretrain.config import load_pretrain_config

    path = p.get("params") or str(default_params(p.get("method", "")))
    try:
        cfg = load_pretrain_config(path, list(p.get("overrides") or []))
    except (ConfigError, OSError) as err:
        v.problems.add(f"pre-training params {path}: {err}", row.run)
        return
    row.epochs, row.batch_size = cfg.train.epochs, cfg.train.batch_size
    row.note = f"pre-training ({p.get('method')}): not priced"


def _price(result: Plan, configs: dict[str, Any], cache_dir: str | Path, steps: int,
           echo: Callable[[str], None]) -> None:
    by_run = {r.run: r for r in result.rows}
    here_tflops: float | None = None
    estimates: list[cost.DeviceEstimate] = []
    for name, cfg in configs.items():
        row = by_run[name]
        device = cost.run_device(cfg.train.device)
        model = cfg.model
        amp = getattr(cfg.train.amp, "value", cfg.train.amp)
        key = cost.cache_key(model, row.image_size, row.batch_per_device,
                             cost.measured_amp(amp, device), cost.device_name(device))
        if not (Path(cache_dir) / f"{key}.json").is_file():
            echo(f"plan: timing a training step of {row.model} at {row.image_size} px "
                 f"({row.batch_per_device} image(s)) on {device.type} ...")
        step = cost.measure_step(model, row.image_size, row.batch_per_device, amp, device,
                                 steps=steps, cache_dir=cache_dir)
        if here_tflops is None:
            here_tflops = cost.probe_tflops(device, amp)
            estimates = cost.device_estimates(step.device, here_tflops)
        row.step_s, row.step_source = step.seconds, f"{step.source} on {step.device}"
        row.params = step.params
        files = cfg.train.keep_checkpoints + 1  # the kept periodic ones + last.pth, a copy
        row.checkpoint_gb = step.params * cost.CHECKPOINT_BYTES_PER_PARAM * files / 1e9
        if row.iterations is None:
            row.note = (row.note + "; " if row.note else "") + "iterations unknown"
            continue
        device_s = row.iterations * (row.batch_size / row.batch_per_device) * step.seconds
        for e in estimates:
            row.device_hours[f"{e.device} ({e.source})"] = device_s * e.factor / 3600
        row.wall_hours = device_s / 3600 / max(row.devices, 1)
    result.devices = cost.to_dict_estimates(estimates)
    totals: dict[str, float] = {}
    for row in result.rows:
        for k, h in row.device_hours.items():
            totals[k] = totals.get(k, 0.0) + h
        if row.checkpoint_gb:
            totals["checkpoint_disk_gb"] = totals.get("checkpoint_disk_gb", 0.0) + row.checkpoint_gb
    result.totals = totals


# ----------------------------------------------------------------------------- output


def _csv_rows(result: Plan) -> tuple[list[str], list[dict[str, Any]]]:
    hour_cols = list(dict.fromkeys(k for r in result.rows for k in r.device_hours))
    base = [f for f in PlanRow.__dataclass_fields__ if f != "device_hours"]
    header = base + [f"device_hours[{k}]" for k in hour_cols]
    rows = []
    for r in result.rows:
        d = asdict(r)
        d["serves"] = " ".join(r.serves)
        d.pop("device_hours")
        d.update({f"device_hours[{k}]": r.device_hours.get(k) for k in hour_cols})
        rows.append(d)
    return header, rows


def write_plan(result: Plan, out_dir: str | Path) -> tuple[Path, Path]:
    """``plan.json`` (everything) and ``plan.csv`` (the rows) into ``out_dir``, atomically."""
    from vitdet_lib.io import provenance, write_json_atomic, write_text_atomic

    out = Path(out_dir)
    data = asdict(result)
    data["ok"] = result.ok
    data["provenance"] = provenance()
    json_path = write_json_atomic(out / "plan.json", data)
    header, rows = _csv_rows(result)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    return json_path, write_text_atomic(out / "plan.csv", buf.getvalue())


def _fmt(value: Any, spec: str = "{:.1f}") -> str:
    return "-" if value is None else spec.format(value)


def format_plan(result: Plan) -> str:
    """The run matrix as a text table, then totals, device basis and problems."""
    hour_cols = list(dict.fromkeys(k for r in result.rows for k in r.device_hours))
    head = ["run", "serves", "init", "size", "model", "img", "epochs", "iters", "dev",
            "step s", *[f"dev-h {k}" for k in hour_cols], "note"]
    body = [[r.run, " ".join(r.serves), r.init or "-", r.size or "-", r.model or "-",
             _fmt(r.image_size, "{}"), _fmt(r.epochs, "{:g}"), _fmt(r.iterations, "{}"),
             str(r.devices), _fmt(r.step_s, "{:.3f}"),
             *[_fmt(r.device_hours.get(k), "{:.3g}") for k in hour_cols], r.note]
            for r in result.rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    lines.append(f"{len(result.rows)} runs (sweeps: first grid only; widening adds runs)")
    for k, total in result.totals.items():
        lines.append(f"total {k}: {total:.4g}")
    for d in result.devices:
        lines.append(f"  {d['device']}: {d['source']} ({d['basis']})")
    if result.problems:
        lines.append(f"{len(result.problems)} problem(s):")
        lines += [f"  - {p}" for p in result.problems]
    return "\n".join(lines)
