"""The paper's claims, each tested against a study's records: our difference, its spread over
seeds, and a verdict.

Every number is a test-split APbox (``test/bbox/AP``) of current runs; every choice behind it
(lr, wd, drop path, Table 1's schedule) was made on the validation split. A claim compares two
groups of runs, A and B, that differ in one thing; ``difference = mean(A) - mean(B)``.

The spread is the standard error of that difference, ``sqrt(sd_A^2 / n_A + sd_B^2 / n_B)``,
with each group's seed sd; a group of one run (an ablation trained with one seed) borrows the
pooled seed sd of the study's Table 1 cells. Verdicts, with ``margin = 2 x spread``:

- ``A > B`` ("A beats B"): ``holds`` when difference > margin, ``contradicted`` when
  difference < -margin, else ``inconclusive`` (the difference is within the seed spread);
- ``A !> B`` ("A does not beat B"): ``contradicted`` when difference > margin, ``holds`` when
  difference < -margin, else ``holds (tie within spread)``;
- ``A ~ B`` ("about equal"): ``holds`` when |difference| <= margin, else ``contradicted``;
- a verdict (other than ``inconclusive``) resting on a single-seed side says
  ``low power``;
- a verdict that says a direction, judged on the test split, also needs the validation
  scenes to point the same way: where the validation difference has the opposite sign, it is
  ``inconclusive (validation reverses the sign)``. The two splits score the same runs on
  different scenes, so a reversal puts the difference within the scenes' evaluation noise,
  which the seed spread does not measure (and a single-seed side only borrows). "About equal"
  that holds is left alone: a sign flip within the margin agrees with it;
- ``no result`` when a group has no current run yet (the stage that makes it is named).

Profiles without a test split (``mini``, ``paper``) are judged on the validation split, and
the table's ``split`` column says so.
"""
from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .aggregate import best_schedule
from .cells import (
    SELECT,
    TEST,
    by_schedule,
    f3_runs,
    fmt,
    fmt_epochs,
    group_by,
    is_current,
    is_recipe,
    overrides_of,
    param,
    recipe_runs,
    schedule_of,
    serving,
    values_of,
)
from .render import to_markdown

METRIC = TEST + "bbox/AP"
HOLDS, CONTRADICTED, INCONCLUSIVE, NO_RESULT = "holds", "contradicted", "inconclusive", "no result"
MASKED, OTHERS = ("mae", "beit"), ("supervised", "mocov3")
NAMES = {"random": "random", "supervised": "supervised", "mocov3": "MoCo v3", "beit": "BEiT",
         "mae": "MAE"}

Records = list[dict[str, Any]]


@dataclass
class Group:
    """The runs on one side of a comparison and where they come from."""

    label: str
    runs: Records

    def values(self, metric: str = METRIC) -> list[float]:
        return values_of(self.runs, metric)


@dataclass
class Claim:
    key: str  # "a", "b", ... as the study's findings list them
    claim: str
    paper: str  # the paper's evidence, quoted as numbers with their source
    a: Group
    b: Group
    kind: str = ">"  # ">" (A beats B), "!>" (A does not beat B) or "~" (about equal)
    needs: str = ""  # the stage that makes the missing runs
    extra: str = ""  # a descriptive number beside the verdict (e.g. a convergence ratio)


# ----------------------------------------------------------------------------- statistics


def pooled_sd(groups: Iterable[list[float]]) -> float | None:
    """Pooled seed sd over the groups with two or more values (None when there are none)."""
    num = den = 0.0
    for v in groups:
        if len(v) >= 2:
            num += statistics.variance(v) * (len(v) - 1)
            den += len(v) - 1
    return math.sqrt(num / den) if den else None


def compare(a: list[float], b: list[float], noise_sd: float | None, kind: str = ">"
            ) -> tuple[float | None, float | None, str]:
    """``(difference, spread, verdict)`` of A against B (module docstring)."""
    if not a or not b:
        return None, None, NO_RESULT
    sd_a = statistics.stdev(a) if len(a) >= 2 else noise_sd
    sd_b = statistics.stdev(b) if len(b) >= 2 else noise_sd
    diff = statistics.mean(a) - statistics.mean(b)
    if sd_a is None or sd_b is None:
        return diff, None, f"{INCONCLUSIVE} (no seed spread yet: one seed a side)"
    spread = math.sqrt(sd_a ** 2 / len(a) + sd_b ** 2 / len(b))
    margin = 2 * spread
    weak = " (low power: a single-seed side)" if min(len(a), len(b)) < 2 else ""
    if kind == "~":
        verdict = HOLDS if abs(diff) <= margin else CONTRADICTED
    elif kind == "!>":
        verdict = CONTRADICTED if diff > margin else (
            HOLDS if diff < -margin else f"{HOLDS} (tie within spread)")
    else:
        verdict = HOLDS if diff > margin else CONTRADICTED if diff < -margin else INCONCLUSIVE
    # a single-seed side's sd is borrowed: every decided verdict on it is weaker evidence
    return diff, spread, verdict if verdict == INCONCLUSIVE else verdict + weak


REVERSED = f"{INCONCLUSIVE} (validation reverses the sign)"


def cross_check(verdict: str, diff: float | None, val_diff: float | None, kind: str = ">"
                ) -> str:
    """``verdict`` unless the validation difference has the opposite sign of the test one and
    the verdict says a direction (A > B: holds / contradicted; A !> B: the same but a tie;
    A ~ B: contradicted only, as a sign flip within the margin agrees with "about equal"):
    then ``REVERSED``."""
    decided = verdict.startswith(CONTRADICTED) or (
        verdict.startswith(HOLDS) and kind != "~" and "tie within spread" not in verdict)
    if not decided or diff is None or val_diff is None or diff * val_diff >= 0:
        return verdict
    return REVERSED


# ----------------------------------------------------------------------------- run groups


def _recipe(records: Records, table: str, init: str) -> Records:
    return [r for r in serving(records, table) if is_recipe(r) and param(r, "init") == init]


def table1_runs(records: Records, init: str) -> tuple[float | None, Records]:
    """Table 1's cell of ``init``: its best schedule on validation APbox, and those runs."""
    return best_schedule(_recipe(records, "T1", init))


def schedule_runs(records: Records, init: str, schedule: float | None) -> Records:
    """``init``'s Table 1 / Figure 2 recipe runs at ``schedule`` (as the profile lists it); a
    run that feeds no table (a post-hoc check) is not its init's recipe."""
    return [r for r in recipe_runs(records) if param(r, "init") == init
            and schedule is not None and schedule_of(r) == schedule]


def ablation_runs(records: Records, table: str, match: Callable[[str], bool]) -> Records:
    return [r for r in serving(records, table) if any(match(o) for o in overrides_of(r))]


def t4_row(r: dict[str, Any]) -> str | None:
    """The paper's Table 4 row ("1" .. "5") a run belongs to, from its parameters (so runs
    that have not run yet are placed too); None for runs outside the table."""
    kind, pos = param(r, "init_kind"), param(r, "pretrained_pos") or ""
    ovr = overrides_of(r)
    if any("attention" in o or "multi_scale" in o for o in ovr):
        return None
    if kind == "beit":
        if pos == "abs":
            return "3"
        return "2" if "init.rel_pos_init=zero" in ovr else "1"
    if kind == "mae" and pos == "abs":
        return "5" if "model.backbone.rel_pos=none" in ovr else "4"
    return None


def t4_runs(records: Records, row: str) -> Records:
    """The runs of the paper's Table 4 row ``row``."""
    return [r for r in serving(records, "T4") if t4_row(r) == row]


def images_to_match(target: float | None, curve: dict[float, float]) -> str:
    """How many epochs random init needs to reach ``target`` APbox, by linear interpolation on
    its curve (epochs -> APbox); beyond the curve: ``> longest``."""
    if target is None or not curve:
        return ""
    points = sorted(curve.items())
    if target <= points[0][1]:
        return f"<= {points[0][0]:g} ep"
    for (e0, a0), (e1, a1) in itertools.pairwise(points):
        if a0 < target <= a1:
            return f"{e0 + (target - a0) / (a1 - a0) * (e1 - e0):.3g} ep"
    return f"> {points[-1][0]:g} ep"


# ----------------------------------------------------------------------------- the claims


def claims(records: Records) -> list[Claim]:
    """The paper's claims (a)-(h) as comparisons of this study's runs."""
    out: list[Claim] = []
    t1 = {init: table1_runs(records, init) for init in NAMES}
    # labelled with the epochs trained (random init: 4x the listed schedule)
    cell = {init: Group(f"{NAMES[init]} ({fmt_epochs(param(runs[0], 'epochs') if runs else s)} ep)",
                        runs) for init, (s, runs) in t1.items()}

    for init in MASKED:
        out.append(Claim("a", f"{NAMES[init]} pre-training beats random init, even with random's "
                              "4x schedule (T1)",
                         "ViT-B APbox: MAE 50.3, random 48.9 (random trained 4x longer); BEiT "
                         "about as MAE", cell[init], cell["random"], needs="t1-s*"))
    for init in OTHERS:
        out.append(Claim("b", f"{NAMES[init]} does not beat a fully trained random init (T1)",
                         "ViT-B APbox: random 48.9, supervised 47.9, MoCo v3 about as "
                         "supervised", cell[init], cell["random"], kind="!>", needs="t1-s*"))
    for masked in MASKED:
        for other in OTHERS:
            out.append(Claim("c", f"{NAMES[masked]} beats {NAMES[other]} (T1)",
                             "ViT-B APbox: MAE 50.3 / BEiT about as MAE vs supervised 47.9 / "
                             "MoCo v3 about as supervised", cell[masked], cell[other],
                             needs="t1-s*"))

    # (d) at a quarter of the images, does a pre-trained init match random init?
    f2 = [r for r in serving(records, "F2") if is_recipe(r)]
    by_sched = group_by(f2, "init", "schedule")
    random_curve = {float(param(g[0], "epochs")): statistics.mean(values_of(g, METRIC))
                    for (init, _), g in by_sched.items() if init == "random"
                    and values_of(g, METRIC)}
    schedules = sorted({k[1] for k in by_sched if k[1] is not None and k[0] != "random"})
    for init in ("supervised", "mocov3", "beit", "mae"):
        short = schedules[0] if schedules else None
        mine = by_sched.get((init, short), [])
        rand = by_sched.get(("random", short), [])  # random's runs of that listed schedule: 4x
        extra = ""
        t1_vals = values_of(t1[init][1], METRIC)
        if t1_vals and random_curve:
            target = statistics.mean(t1_vals)
            extra = (f"random init needs {images_to_match(target, random_curve)} to reach "
                     f"{NAMES[init]}'s {fmt(target)} at {fmt_epochs(t1[init][0])} ep")
        label = f"{NAMES[init]} ({fmt_epochs(short)} ep)"
        out.append(Claim("d", f"{NAMES[init]} converges several times faster than random init: "
                              f"at 1/4 of the images it beats random (F2)",
                         "random init needs ~400 epochs to reach its best; pre-trained inits "
                         "peak at 25-100 (ViT-B)", Group(label, mine),
                         Group(f"random ({fmt_epochs(param(rand[0], 'epochs')) if rand else '?'}"
                               " ep)", rand), needs="f2", extra=extra))

    # (d) at equal fine-tuning images (the longest schedule both have): the paper's premise
    # that pre-trained inits are ahead of random at any equal schedule until they saturate
    by_epochs = group_by(f2, "init", "epochs")
    random_eps = {float(k[1]) for k in by_epochs if k[0] == "random" and k[1] is not None}
    for init in ("supervised", "mocov3", "beit", "mae"):
        common = sorted(float(e) for (i, e) in by_epochs if i == init and e is not None
                        and float(e) in random_eps)
        ep = common[-1] if common else None
        at = f"{fmt_epochs(ep)} ep" if ep is not None else "no schedule random also has"
        mine, rand = by_epochs.get((init, ep), []), by_epochs.get(("random", ep), [])
        out.append(Claim("d", f"{NAMES[init]} beats random init at equal fine-tuning images "
                              "(F2)",
                         "Figure 2: every pre-trained init converges ~4x faster, so at equal "
                         "epochs it leads random init (ViT-B, ViT-L)",
                         Group(f"{NAMES[init]} ({at})", mine), Group(f"random ({at})", rand),
                         needs="f2-long"))

    # (e) T3, (f) T2: each ablation against the MAE recipe runs at its own schedule, one row
    # per schedule the profile ablates at (a longer one gives the comparison more signal)
    def mae_at(s: float | None) -> Group:
        return Group(f"MAE hybrid, FPN ({fmt_epochs(s)} ep)", schedule_runs(records, "mae", s))

    def per_schedule(runs: Records) -> dict[float | None, Records]:
        return by_schedule(runs) or {t1["mae"][0]: []}

    window = ablation_runs(records, "T3", lambda o: o.endswith("attention=window"))
    glob = ablation_runs(records, "T3", lambda o: o.endswith("attention=global"))
    single = ablation_runs(records, "T2", lambda o: o.endswith("multi_scale=false"))
    for s, runs in per_schedule(glob).items():
        out.append(Claim("e", "hybrid attention (4 global blocks) is about as good as global "
                              "(T3)", "ViT-L APbox: hybrid 53.3, global about the same",
                         mae_at(s), Group(f"MAE global ({fmt_epochs(s)} ep)", runs), kind="~",
                         needs="ablations"))
    for s, runs in per_schedule(window).items():
        out.append(Claim("e", "hybrid attention beats window-only attention (T3)",
                         "ViT-L APbox: hybrid 53.3, window-only 50.7", mae_at(s),
                         Group(f"MAE window-only ({fmt_epochs(s)} ep)", runs),
                         needs="ablations"))
    for s, runs in per_schedule(single).items():
        out.append(Claim("f", "the multi-scale (FPN) adapter beats single-scale (T2)",
                         "ViT-B APbox: multi-scale 50.1, single-scale 48.4", mae_at(s),
                         Group(f"MAE single-scale ({fmt_epochs(s)} ep)", runs),
                         needs="ablations"))

    # (g) Figure 3: longest against shortest MAE pre-training, per fine-tuning schedule
    for s, runs in per_schedule(f3_runs(records)).items():
        f3 = {float(k[0]): g for k, g in group_by(runs, "pretrain_epochs").items()}
        eps = sorted(f3)
        curve = ", ".join(f"{e:g} ep: {fmt(statistics.mean(v))}" for e in eps
                          if (v := values_of(f3[e], METRIC)))
        out.append(Claim(
            "g", "AP grows with MAE pre-training epochs (F3)",
            "ViT-L APbox: large gains from 100 to 800 epochs, 53.1 at 800, 53.3 at 1600",
            Group(f"MAE {eps[-1]:g} pre-training ep ({fmt_epochs(s)} ep)" if eps
                  else "MAE longest", f3[eps[-1]] if eps else []),
            Group(f"MAE {eps[0]:g} pre-training ep ({fmt_epochs(s)} ep)" if len(eps) > 1
                  else "MAE shortest", f3[eps[0]] if len(eps) > 1 else []),
            needs="pretrain-extra, ablations", extra=curve))

    # (h) Table 4: relative position biases
    rows = {row: t4_runs(records, row) for row in "12345"}
    out.append(Claim("h", "relative position biases help in fine-tuning: MAE with rel-pos "
                          "(zero-init) beats MAE without (T4 rows 4 vs 5)",
                     "ViT-L APbox 53.0 -> 53.3 (+0.2-0.3) with rel-pos", Group("row 4", rows["4"]),
                     Group("row 5", rows["5"]), needs="t4"))
    out.append(Claim("h", "pre-trained relative position biases help: BEiT with its rel-pos beats "
                          "BEiT with rel-pos re-initialised to zero (T4 rows 1 vs 2)",
                     "+0.1-0.3 APbox from pre-trained rel-pos", Group("row 1", rows["1"]),
                     Group("row 2", rows["2"]), needs="t4"))
    out.append(Claim("h", "BEiT pre-trained with rel-pos beats BEiT pre-trained with abs "
                          "(T4 rows 1 vs 3)",
                     "+0.1-0.3 APbox from pre-trained rel-pos", Group("row 1", rows["1"]),
                     Group("row 3", rows["3"]), needs="pretrain-extra, t4"))
    return out


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{fmt(values[0], 2)} (n=1)"
    return f"{fmt(statistics.mean(values), 2)} ± {fmt(statistics.stdev(values), 2)} " \
           f"(n={len(values)})"


def findings_table(records: Records, stage_of: Callable[[str], str] | None = None
                   ) -> pd.DataFrame:
    """One row per claim: A and B (test APbox mean ± sd), difference ± spread, verdict.

    ``stage_of``: run name -> stage, to say which stages a claim without a result waits for.
    """
    found = claims(records)
    # the test split where the profile has one; else validation (the split column says so)
    metric = METRIC if any(values_of(c.a.runs + c.b.runs, METRIC) for c in found) else SELECT
    t1_groups = [values_of(table1_runs(records, init)[1], metric) for init in NAMES]
    noise = pooled_sd(t1_groups)
    rows = []
    for c in found:
        a, b = c.a.values(metric), c.b.values(metric)
        diff, spread, verdict = compare(a, b, noise, c.kind)
        val_diff = None
        if metric == METRIC:  # judged on test: validation is the second look at the same runs
            va, vb = c.a.values(SELECT), c.b.values(SELECT)
            val_diff = statistics.mean(va) - statistics.mean(vb) if va and vb else None
            verdict = cross_check(verdict, diff, val_diff, c.kind)
        if verdict == NO_RESULT:
            waiting = [r["run"] for r in c.a.runs + c.b.runs if not is_current(r)]
            if not waiting and not (a and b):
                verdict = f"{NO_RESULT} (no such runs in this profile)"
            elif stage_of is not None:
                verdict = f"{NO_RESULT} (stage {', '.join(dict.fromkeys(map(stage_of, waiting)))})"
            else:
                verdict = f"{NO_RESULT} (stage {c.needs})"
        rows.append({
            "claim": c.key, "statement": c.claim, "paper": c.paper,
            "A": f"{c.a.label}: {_summary(a)}", "B": f"{c.b.label}: {_summary(b)}",
            "difference": fmt(diff, 2) if diff is not None else "-",
            "± spread": fmt(spread, 2) if spread is not None else "-",
            "val difference": fmt(val_diff, 2) if val_diff is not None else "-",
            "verdict": verdict, "split": "test" if metric == METRIC else "val",
            "note": c.extra,
            "runs": ", ".join(r["run"] for r in c.a.runs + c.b.runs if "run" in r)})
    df = pd.DataFrame(rows)
    df.attrs["noise_sd"] = noise
    return df


def findings_markdown(df: pd.DataFrame, profile: str, note: str = "") -> str:
    """findings.md: the rule, then the claims table (without the run lists)."""
    noise = df.attrs.get("noise_sd")
    counts = df["verdict"].str.split(" ").str[0].value_counts().to_dict() if len(df) else {}
    lines = [f"# Findings of the `{profile}` study: the paper's claims, tested", ""]
    if note:
        lines += [f"> {note}", ""]
    lines += [
        "APbox of current runs on the held-out test scenes (`split` column; a profile without a "
        "test split is judged on validation); every selection made on the validation scenes. "
        "`difference` = mean(A) - mean(B); `± spread` = the standard error "
        "of that difference from the seed sd of each side (a single-seed side borrows the "
        "pooled seed sd of the Table 1 cells"
        + (f", {noise:.2f} AP" if noise is not None else ", not measured yet") + "). "
        "Verdict: A beats B `holds` when the difference exceeds 2 x spread, `contradicted` when "
        "it is below -2 x spread, else `inconclusive`; A does not beat B is `contradicted` above "
        "2 x spread, `holds` below -2 x spread and a `tie within spread` between; A ~ B `holds` "
        "within 2 x spread. `low power`: the verdict rests on a single-seed side (its sd "
        "borrowed). `val difference`: the same difference on the validation scenes; where it "
        "has the opposite sign, a decided verdict becomes `inconclusive (validation reverses "
        "the sign)`: the difference is within the evaluation noise of the scenes.",
        "",
        "Verdicts: " + (", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"),
        "", to_markdown(df.drop(columns=["runs"])), "",
        "The runs behind each row are listed in `findings.csv`.", ""]
    return "\n".join(lines)
