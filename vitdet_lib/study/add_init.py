"""Benchmark your own pre-trained ViT: add a checkpoint file to a profile as one more init.

``--add-init NAME=PATH[:LAYOUT]`` (repeatable) adds ``profile.inits[NAME]`` and puts NAME on the
``init`` axis of the runs that compare initialisations, so the new checkpoint is fine-tuned
and evaluated exactly as the shipped ones are and lands in the same tables:

- the Table 1 / Figure 2 run templates (``serves`` has T1 or F2, ``matrix`` has ``init``);
- with ``all_comparisons``, every template whose ``matrix`` has an ``init`` axis;
- the tuning sweeps (the protocol applies to the new init too), see :func:`_sweeps_for`.

LAYOUT is one of ``checkpoint.detect.Layout`` (mae, timm, mocov3, beit, vitdet) or ``auto``
(the default), which reads the file and says what it found. The init kind follows from the
layout (it sets the paper's positional treatment for that kind).

From a notebook: ``load_benchmark_profile("smoke", ["mine=/ckpt/mine.pth:auto"])``.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from vitdet_lib.checkpoint.detect import (
    AUTO,
    LAYOUT_KIND,
    Layout,
    detect_layout,
    init_kind_of,
    parse_layout,
)
from vitdet_lib.checkpoint.layouts import unwrap_state
from vitdet_lib.checkpoint.load import read_checkpoint_file
from vitdet_lib.checkpoint.report import CheckpointError
from vitdet_lib.config import ConfigError

from .profile import InitSource, StudyProfile, SweepConfig, expand_runs, load_profile

COMPARISON_TABLES = ("T1", "F2")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# readers shared by layouts: naming "timm" for an MAE file (or the reverse) reads the same keys
_SAME_READER = {Layout.MAE: "timm", Layout.TIMM: "timm"}
# any value > 0 gives the model the layer-scale gammas the checkpoint then fills
_LAYER_SCALE = "model.backbone.layer_scale_init=0.1"


def parse_spec(spec: str) -> tuple[str, str, str]:
    """``NAME=PATH[:LAYOUT]`` -> (name, path, layout string; ``auto`` when not given).

    A trailing ``:word`` is a layout only when the word has no ``/`` or ``.`` (so a path
    with a colon still reads as a path).

    Raises:
        ConfigError: no ``=``, an empty or ill-formed name, or an empty path.
    """
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--add-init {spec!r}: expected NAME=PATH[:LAYOUT], e.g. "
                          f"mine=/ckpt/mine.pth:auto")
    if not _NAME.match(name):
        raise ConfigError(f"--add-init {spec!r}: NAME may hold letters, digits and -_. only")
    path, colon, layout = rest.rpartition(":")
    if not colon or not path or "/" in layout or "." in layout:
        path, layout = rest, AUTO
    return name, path, layout


def _sizes_of(profile: StudyProfile) -> list[str]:
    return list(profile.sizes) or [""]


def init_source(spec: str, profile: StudyProfile,
                echo: Callable[[str], None] = print) -> tuple[str, InitSource]:
    """The ``InitSource`` one spec stands for, its checkpoint file(s) checked and detected.

    A PATH may use ``{size}`` (one file per model size of the profile, as the paper profile's
    official checkpoints do); each size's file must exist.

    Raises:
        ConfigError: unknown layout, missing or unreadable file, a layout no converter reads,
            a stated layout the file is not in, or NAME already an init of the profile.
    """
    name, path, layout_str = parse_spec(spec)
    if name in profile.inits:
        raise ConfigError(f"--add-init {spec!r}: profile {profile.name} already has an init "
                          f"named {name!r}; choose another NAME")
    try:
        stated = parse_layout(layout_str)
    except ValueError as err:
        raise ConfigError(f"--add-init {spec!r}: {err}") from None
    files = sorted({str(Path(path.format(size=s)).expanduser().resolve())
                    for s in _sizes_of(profile)}) if "{size}" in path else [
        str(Path(path).expanduser().resolve())]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"--add-init {spec!r}: checkpoint file(s) not found: {missing}")
    found: set[Layout] = set()
    layer_scale = False
    for f in files:
        try:
            obj = read_checkpoint_file(f)  # once: official files are hundreds of MB
            layout, reason = detect_layout(obj)
            init_kind_of(layout)  # refuses layouts without a converter
            state, _ = unwrap_state(obj)
        except CheckpointError as err:
            raise ConfigError(f"--add-init {spec!r}: {err}") from None
        if stated is not None and _SAME_READER.get(stated, stated) != _SAME_READER.get(
                layout, layout):
            raise ConfigError(f"--add-init {spec!r}: said layout {stated.value}, but {f} is "
                              f"in the {layout.value} layout ({reason})")
        if stated is None:
            echo(f"--add-init {name}: auto-detected layout {layout.value} in {f}: {reason}")
        found.add(layout)
        # layer-scale gammas (BEiT, some timm models) need them in the model too
        layer_scale |= any(k.endswith((".gamma_1", ".ls1.gamma")) for k in state)
    if stated is None and len(found) > 1:
        raise ConfigError(f"--add-init {spec!r}: the per-size files are in different layouts "
                          f"{sorted(v.value for v in found)}")
    layout = stated or found.pop()
    kind = LAYOUT_KIND[layout]
    overrides = [_LAYER_SCALE] if layer_scale else []
    checkpoint = str(Path(path).expanduser().resolve()) if "{size}" not in path else path
    return name, InitSource(kind=kind.value, checkpoint=checkpoint, overrides=overrides)


def _sweeps_for(profile: StudyProfile, tuned_by: set[str]) -> list[int]:
    """Indexes of the sweeps a new (pre-trained) init joins: those tuning pre-trained inits
    (the paper tunes random init on its own, longer schedule), plus, for each sweep name a
    template the init joins is ``tuned_by``, the first sweep of that name if none of those."""
    def pretrained(s: SweepConfig) -> bool:
        return any(profile.inits[n].kind != "random" for n in s.inits if n in profile.inits)

    chosen = [i for i, s in enumerate(profile.sweeps) if pretrained(s)]
    for name in sorted(tuned_by):
        if not any(profile.sweeps[i].name == name for i in chosen):
            chosen += [i for i, s in enumerate(profile.sweeps) if s.name == name][:1]
    return chosen or ([0] if profile.sweeps else [])


def add_inits(profile: StudyProfile, specs: Iterable[str], all_comparisons: bool = False,
              echo: Callable[[str], None] = print) -> StudyProfile:
    """A copy of ``profile`` with each ``NAME=PATH[:LAYOUT]`` spec added as an init.

    Args:
        specs: the ``--add-init`` values.
        all_comparisons: add to every template with an ``init`` axis (T2/T3/T4 ablations
            too), not only the Table 1 / Figure 2 comparison.
        echo: receives what ``auto`` chose.
    Raises:
        ConfigError: a bad spec (naming it), or no template to add the init to.
    """
    out = copy.deepcopy(profile)
    specs = list(specs)
    if not specs:
        return out
    names: list[str] = []
    for spec in specs:
        name, source = init_source(spec, out, echo)
        out.inits[name] = source
        names.append(name)
    touched, tuned_by = 0, set()
    for t in out.runs:
        axis = t.matrix.get("init")
        if not isinstance(axis, list):
            continue
        if all_comparisons or set(t.serves) & set(COMPARISON_TABLES):
            axis.extend(n for n in names if n not in axis)
            touched += 1
            if t.tuned_by:
                tuned_by.add(t.tuned_by)
    if not touched:
        raise ConfigError(f"profile {out.name}: no run template compares inits (serves T1/F2 "
                          f"with a matrix 'init' axis), so {names} would never run")
    for i in _sweeps_for(out, tuned_by):
        out.sweeps[i].inits.extend(n for n in names if n not in out.sweeps[i].inits)
    expand_runs(out)  # the names must expand cleanly in every template
    return out


def load_benchmark_profile(name_or_path: str | Path, add_inits_specs: Iterable[str] = (),
                           all_comparisons: bool = False,
                           echo: Callable[[str], None] = print) -> StudyProfile:
    """``load_profile`` plus :func:`add_inits`: the one entry point of CLI and notebooks."""
    return add_inits(load_profile(name_or_path), add_inits_specs, all_comparisons, echo)
