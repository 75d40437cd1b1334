"""A study profile as data: which runs exist (init x size x schedule x ablation), where their
checkpoints come from, and how they are launched.

A profile (``params/study/<name>.yaml``) is loaded strictly (unknown keys are errors naming the
key path). Run templates expand a ``matrix`` of values into runs by ``str.format`` on every
string of the template, e.g. ``name: ft-{size}-{init}`` with ``matrix: {init: [random, mae]}``.
A template's ``init`` names an entry of ``inits``; expansion turns it into the notebook
parameters ``init_kind``, ``init_checkpoint`` and ``init_overrides`` and, when the checkpoint
is produced by a pre-training run of the profile, a dependency on that run.

The study protocol (docs/paper.md, "Tuning protocol") is expressed with three more fields:
``seeds`` (one run per seed, named ``<name>-s<seed>``), ``tuned_by`` (the run takes lr, weight
decay and drop path from that sweep's winner for its init, decided on the validation split) and
an init's ``schedule_factor`` (random init trains 4x longer, in tuning and in final runs, as the
paper does). ``stage`` groups runs so that a long study runs in parts (``study run --stage``).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdet_lib.config import ConfigError, from_dict, yaml_load
from vitdet_lib.errors import yaml_errors

from .budget import PretrainBudget, budget_epochs
from .launcher import LauncherConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO_ROOT / "params" / "study"


@dataclass
class InitSource:
    """Where one initialisation's weights come from.

    Args:
        kind: ``checkpoint.InitKind`` value (random, supervised, mocov3, beit, mae).
        pretrain_run: the profile's pre-training run that writes the checkpoint (None: a file).
        checkpoint: file name inside that run's work directory, or a path (may use ``{size}``).
        overrides: experiment overrides this init needs (BEiT: layer scale).
        pretrain_epochs: pre-training length, for Figure 3.
        schedule_factor: every fine-tuning ``epochs`` of this init is multiplied by it (the
            paper's random init: 4, in tuning and final runs).
        pretrained_pos: the positional information the checkpoint was pre-trained with
            (``abs`` | ``rel``), shown in Table 4.
    """

    kind: str = "random"
    pretrain_run: str | None = None
    checkpoint: str | None = None
    overrides: list[str] = field(default_factory=list)
    pretrain_epochs: float | None = None
    schedule_factor: float = 1.0
    pretrained_pos: str = ""


@dataclass
class RunTemplate:
    """One run, or a family of runs when ``matrix`` is given.

    Args:
        name: run name, unique after expansion (letters, digits, ``-_.``).
        notebook: experiment notebook stem under ``notebooks/``.
        serves: the tables/figures the run feeds (T1, F2, ...).
        parameters: notebook parameters.
        matrix: values to expand over (cartesian product).
        init: an ``inits`` key (after expansion).
        size: a ``sizes`` key (after expansion).
        needs: runs that must succeed first.
        seeds: one run per seed (``train.seed``), named ``<name>-s<seed>`` unless the name
            uses ``{seed}``; empty: the params file's seed, one run.
        tuned_by: a sweep's name: lr, weight decay and drop path come from that sweep's winner
            for this run's init (the run waits for the sweep).
        stage: the part of the study the run belongs to (``study run --stage``).
    """

    name: str = ""
    notebook: str = ""
    serves: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    init: str | None = None
    size: str | None = None
    needs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    tuned_by: str | None = None
    stage: str = ""


@dataclass
class SweepConfig:
    """The tuning protocol for each of ``inits``: an lr x wd grid widened while its best point
    lies on the border (at most ``max_widenings`` times), then ``drop_path`` values at the best.

    Args:
        parameters: fine-tune notebook parameters shared by every run of the sweep.
        drop_path_overrides: experiment overrides added in the drop-path stage only.
        drop_path_epochs: fine-tuning epochs of the drop-path stage (the paper tunes lr x wd at
            25 epochs and drop path at 50); None: the grid's ``epochs``.
        stage: the part of the study the sweep belongs to (``study run --stage``).
    """

    name: str = "hp"
    inits: list[str] = field(default_factory=list)
    size: str = ""
    lr: list[float] = field(default_factory=list)
    weight_decay: list[float] = field(default_factory=list)
    drop_path: list[float] = field(default_factory=list)
    factor: float = 2.0
    max_widenings: int = 2
    parameters: dict[str, Any] = field(default_factory=dict)
    drop_path_overrides: list[str] = field(default_factory=list)
    drop_path_epochs: float | None = None
    stage: str = "tune"


@dataclass
class StudyProfile:
    """Everything ``vitdet-bench study run --profile NAME`` does.

    Args:
        note: shown on every rendered page (e.g. "numbers are not meaningful at this scale").
        results_dir: run records, executed notebooks and the report.
        work_dir: checkpoints and training records (git-ignored).
        data_fallback: experiment overrides used when Fashion-MNIST is not installed
            (detection on shape scenes); empty = no fallback.
        sizes: experiment overrides per model size name.
        torch_threads: CPU threads of each run (0 = torch's default); 1 on a shared small
            CPU, where more threads than free cores make tiny models many times slower.
        pretrain_budget: the rule that sets each method's pre-training epochs.
        ship_checkpoints: pre-training runs also write their encoder as a small fp16 file to
            ``<results_dir>/checkpoints/<run>.pth``, and fine-tunes start from that file, so a
            study shipped with its records can be continued without re-pre-training.
        stale_on_code_change: a change of the code version makes a record stale. A study run
            in stages over several sessions sets it false: each record still names the code
            (and commit) it ran with, and the report lists them.
    """

    name: str = ""
    description: str = ""
    note: str = ""
    results_dir: str = ""
    work_dir: str = ""
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    torch_threads: int = 0
    data_fallback: list[str] = field(default_factory=list)
    pretrain_budget: PretrainBudget = field(default_factory=PretrainBudget)
    ship_checkpoints: bool = False
    stale_on_code_change: bool = True
    sizes: dict[str, list[str]] = field(default_factory=dict)
    inits: dict[str, InitSource] = field(default_factory=dict)
    runs: list[RunTemplate] = field(default_factory=list)
    sweeps: list[SweepConfig] = field(default_factory=list)


@dataclass
class Run:
    """One concrete notebook execution.

    ``tuned_by``: the sweep whose winner (for ``parameters["init"]``) sets lr / weight decay /
    drop path when the run is executed; ``needs`` then includes the sweep's node name
    (``sweep_node(sweep, init)``).
    """

    name: str
    notebook: str
    parameters: dict[str, Any]
    needs: tuple[str, ...] = ()
    serves: tuple[str, ...] = ()
    stage: str = ""
    tuned_by: str | None = None


def find_sweep(profile: StudyProfile, name: str, init: str, who: str = "") -> SweepConfig:
    """The sweep called ``name`` that tunes ``init`` (several sweeps may share a name, e.g.
    one for the pre-trained inits and one with random init's schedules)."""
    for s in profile.sweeps:
        if s.name == name and init in s.inits:
            return s
    tuned = sorted({i for s in profile.sweeps if s.name == name for i in s.inits})
    raise ConfigError(f"profile {profile.name}: {who or 'a run'} is tuned_by {name!r}, which "
                      f"does not tune init {init!r} (it tunes {tuned})")


def sweep_node(sweep: str, init: str) -> str:
    """The dependency-graph name of one init's tuning sweep."""
    return f"{sweep}-{init}"


def profile_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    return PROFILES_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str | Path) -> StudyProfile:
    """Load and check a profile by name (``params/study/<name>.yaml``) or path.

    Raises:
        ConfigError: unknown keys, unknown init/size names, duplicate run names, unknown needs.
    """
    path = profile_path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"study profile {path} not found")
    with yaml_errors(path):
        data = yaml_load(path.read_text()) or {}  # the params files' loader: 1e-4 is a float
    profile = profile_from_dict(data, where=f"{path}: profile")
    profile.name = profile.name or path.stem
    profile.results_dir = profile.results_dir or f"results/study/{profile.name}"
    profile.work_dir = profile.work_dir or f"work_dirs/study/{profile.name}"
    if profile.ship_checkpoints:  # the export is always of the run's final checkpoint
        other = {k: v.checkpoint for k, v in profile.inits.items()
                 if v.pretrain_run and v.checkpoint not in (None, "last.pth")}
        if other:
            raise ConfigError(f"{path}: ship_checkpoints exports each pre-training's last.pth, "
                              f"but inits {sorted(other)} ask for {sorted(set(other.values()))};"
                              " use last.pth or turn ship_checkpoints off")
    expand_runs(profile)  # validates names and references
    return profile


def profile_from_dict(data: dict[str, Any], where: str = "profile") -> StudyProfile:
    """``from_dict`` for the profile, whose lists and mappings hold dataclasses."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a profile must be a mapping")
    # ``x-...`` keys only hold YAML anchors (shared lists) for the rest of the file
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    inits = data.pop("inits", None) or {}
    runs = data.pop("runs", None) or []
    sweeps = data.pop("sweeps", None) or []
    profile: StudyProfile = from_dict(StudyProfile, data, where=where)
    profile.inits = {k: from_dict(InitSource, v, where=f"{where}.inits.{k}")
                     for k, v in inits.items()}
    profile.runs = [from_dict(RunTemplate, v, where=f"{where}.runs[{i}]")
                    for i, v in enumerate(runs)]
    profile.sweeps = [from_dict(SweepConfig, v, where=f"{where}.sweeps[{i}]")
                      for i, v in enumerate(sweeps)]
    for i, s in enumerate(profile.sweeps):
        s.lr = [float(v) for v in s.lr]
        s.weight_decay = [float(v) for v in s.weight_decay]
        s.drop_path = [float(v) for v in s.drop_path]
    return profile


def _format(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(**values)
    if isinstance(value, list):
        return [_format(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _format(v, values) for k, v in value.items()}
    return value


def shipped_checkpoint(profile: StudyProfile, pretrain_run: str) -> Path:
    """Where a ``ship_checkpoints`` profile keeps pre-training run ``pretrain_run``'s export."""
    return Path(profile.results_dir) / "checkpoints" / f"{pretrain_run}.pth"


def init_parameters(profile: StudyProfile, init: str, size: str | None
                    ) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Notebook parameters and dependencies of initialisation ``init`` at model ``size``."""
    if init not in profile.inits:
        raise ConfigError(f"profile {profile.name}: init {init!r} is not one of "
                          f"{sorted(profile.inits)}")
    src = profile.inits[init]
    checkpoint, needs = None, ()
    if src.checkpoint:
        checkpoint = src.checkpoint.format(size=size or "")
        if src.pretrain_run:
            checkpoint = (str(shipped_checkpoint(profile, src.pretrain_run))
                          if profile.ship_checkpoints
                          else str(Path(profile.work_dir) / src.pretrain_run / checkpoint))
            needs = (src.pretrain_run,)
    params = {"init": init, "init_kind": src.kind, "init_checkpoint": checkpoint,
              "init_overrides": list(src.overrides), "pretrain_epochs": src.pretrain_epochs,
              "pretrained_pos": src.pretrained_pos or None}
    return params, needs


def size_parameters(profile: StudyProfile, size: str) -> dict[str, Any]:
    if size not in profile.sizes:
        raise ConfigError(f"profile {profile.name}: size {size!r} is not one of "
                          f"{sorted(profile.sizes)}")
    return {"size": size, "size_overrides": list(profile.sizes[size])}


def _flatten(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def make_run(profile: StudyProfile, name: str, notebook: str, parameters: dict[str, Any], *,
             init: str | None = None, size: str | None = None, needs: tuple[str, ...] = (),
             serves: tuple[str, ...] = (), stage: str = "", tuned_by: str | None = None,
             seed: int | None = None) -> Run:
    params = dict(parameters)
    if isinstance(params.get("overrides"), list):  # ``[*anchor, extra]`` nests a list in YAML
        params["overrides"] = _flatten(params["overrides"])
    deps = list(needs)
    if size is not None:
        params.update(size_parameters(profile, size))
    if init is not None:
        init_params, init_needs = init_parameters(profile, init, size)
        params.update(init_params)
        deps += [n for n in init_needs if n not in deps]
        factor = profile.inits[init].schedule_factor
        if factor != 1.0:
            if params.get("epochs") is None:
                raise ConfigError(f"profile {profile.name}: run {name}: init {init!r} has "
                                  f"schedule_factor {factor:g}, so the run must set `epochs`")
            params["schedule_epochs"] = float(params["epochs"])  # the schedule as listed
            params["epochs"] = float(params["epochs"]) * factor
    if params.get("epochs") is not None:
        params["epochs"] = float(params["epochs"])
        params.setdefault("schedule_epochs", params["epochs"])
    if notebook == "pretrain" and params.get("budget"):
        epochs = budget_epochs(profile, str(params.get("method")))
        params["overrides"] = [*(params.get("overrides") or []), f"train.epochs={epochs}"]
        params["budget_epochs"] = epochs
    if seed is not None:
        params["seed"] = int(seed)
    for sources in (params.get("ap_runs") or {}).values():  # Table 3 reads their AP
        for source in [sources] if isinstance(sources, str) else sources:
            if source not in deps:
                deps.append(source)
    if tuned_by is not None:
        if init is None:
            raise ConfigError(f"profile {profile.name}: run {name} is tuned_by {tuned_by!r} "
                              "but has no init")
        # ``tuned_init``: take another init's winner (Table 4's BEiT pre-trained with absolute
        # positions uses BEiT's recipe)
        node = sweep_node(tuned_by, params.get("tuned_init") or init)
        if node not in deps:
            deps.append(node)
        params["tuned_by"] = tuned_by
    params["serves"] = list(serves)
    return Run(name, notebook, params, tuple(deps), tuple(serves), stage, tuned_by)


def expand_runs(profile: StudyProfile) -> list[Run]:
    """The profile's static runs (sweeps excluded: their grid depends on results)."""
    runs: list[Run] = []
    for t in profile.runs:
        keys = list(t.matrix)
        for combo in itertools.product(*(t.matrix[k] for k in keys)) if keys else [()]:
            values = dict(zip(keys, combo))
            for seed in t.seeds or [None]:
                vals = values if seed is None else {**values, "seed": seed}
                try:
                    name = _format(t.name, vals)
                    if seed is not None and "{seed}" not in t.name:
                        name = f"{name}-s{seed}"
                    run = make_run(profile, name, _format(t.notebook, vals),
                                   _format(t.parameters, vals),
                                   init=_format(t.init, vals), size=_format(t.size, vals),
                                   needs=tuple(_format(t.needs, vals)), serves=tuple(t.serves),
                                   stage=t.stage, tuned_by=t.tuned_by, seed=seed)
                except KeyError as err:
                    raise ConfigError(f"profile {profile.name}: run template {t.name!r} uses "
                                      f"{{{err.args[0]}}}, which its matrix does not define"
                                      ) from None
                runs.append(run)
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"profile {profile.name}: duplicate run names {dupes}")
    names_of_sweeps = {s.name for s in profile.sweeps}
    known = set(names) | {sweep_node(s.name, i) for s in profile.sweeps for i in s.inits}
    for r in runs:
        if r.tuned_by is not None:
            if r.tuned_by not in names_of_sweeps:
                raise ConfigError(f"profile {profile.name}: run {r.name} is tuned_by unknown "
                                  f"sweep {r.tuned_by!r} (sweeps: {sorted(names_of_sweeps)})")
            find_sweep(profile, r.tuned_by,
                       r.parameters.get("tuned_init") or r.parameters["init"], r.name)
        missing = [n for n in r.needs if n not in known]
        if missing:
            raise ConfigError(f"profile {profile.name}: run {r.name} needs unknown runs {missing}")
    for s in profile.sweeps:
        for init in s.inits:
            init_parameters(profile, init, s.size)
            if profile.inits[init].schedule_factor != 1.0 and s.parameters.get("epochs") is None:
                raise ConfigError(f"profile {profile.name}: sweep {s.name} tunes init {init!r} "
                                  "(schedule_factor != 1): set `epochs` in its parameters")
        size_parameters(profile, s.size)
    return runs
