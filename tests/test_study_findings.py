"""The findings: each claim's comparison, spread and verdict, on synthetic records."""
import pytest

from vitdet_lib.study.findings import (
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    NO_RESULT,
    REVERSED,
    compare,
    cross_check,
    findings_markdown,
    findings_table,
    images_to_match,
    pooled_sd,
)


def rec(run, init, ap, *, serves=("T1", "F2", "T2", "T3", "T4", "F3"), schedule=3.0, epochs=None,
        overrides=(), kind=None, pretrain_epochs=None, metrics=None):
    return {"run": run, "state": "success", "serves": list(serves),
            "parameters": {"init": init, "init_kind": kind or init, "schedule_epochs": schedule,
                           "epochs": epochs or schedule, "overrides": list(overrides),
                           "pretrain_epochs": pretrain_epochs},
            "metrics": {"bbox/AP": ap, "test/bbox/AP": ap, **(metrics or {})}}


def test_compare_verdicts():
    assert compare([10, 11, 12], [5, 6, 7], None)[2] == HOLDS
    assert compare([5, 6, 7], [10, 11, 12], None)[2] == CONTRADICTED
    assert compare([5, 7, 9], [6, 7, 8], None)[2] == INCONCLUSIVE
    assert compare([6, 7, 8], [6.5], 1.0, "~")[2] == HOLDS + " (low power: a single-seed side)"
    assert compare([6, 7, 8], [6.5, 7.5, 7], None, "~")[2] == HOLDS
    assert compare([5, 6, 7], [10, 11, 12], None, "!>")[2] == HOLDS  # clearly not better
    assert compare([5, 7, 9], [6, 7, 8], None, "!>")[2] == HOLDS + " (tie within spread)"
    assert compare([10, 11, 12], [5, 6, 7], None, "!>")[2] == CONTRADICTED
    low = " (low power: a single-seed side)"
    assert compare([6, 7, 8], [20], 1.0, "~")[2] == CONTRADICTED + low
    assert compare([], [1.0], 1.0)[2] == NO_RESULT
    assert compare([10, 11, 12], [5.0], 1.0)[2] == HOLDS + low  # any decided verdict on n=1
    assert compare([5.0], [10, 11, 12], 1.0)[2] == CONTRADICTED + low
    assert compare([6, 7, 8], [7.5], 1.0)[2] == INCONCLUSIVE  # undecided: nothing to weaken
    diff, spread, _ = compare([2.0, 4.0], [1.0], 2.0)  # n=1 borrows the noise sd
    assert diff == pytest.approx(2.0) and spread == pytest.approx((2 / 2 + 4 / 1) ** 0.5)


def test_cross_check_needs_validation_to_point_the_same_way():
    low = HOLDS + " (low power: a single-seed side)"
    assert cross_check(low, 1.0, -0.1) == REVERSED
    assert cross_check(CONTRADICTED, -2.0, 0.5) == REVERSED
    assert cross_check(low, 1.0, 0.3) == low  # same sign: the verdict stands
    assert cross_check(INCONCLUSIVE, 1.0, -1.0) == INCONCLUSIVE  # nothing decided
    assert cross_check(HOLDS + " (tie within spread)", 0.1, -0.1, "!>") == \
        HOLDS + " (tie within spread)"
    assert cross_check(HOLDS, 0.2, -0.2, "~") == HOLDS  # a flip within the margin: about equal
    assert cross_check(CONTRADICTED, 2.0, -1.0, "~") == REVERSED
    assert cross_check(HOLDS, 1.0, None) == HOLDS  # no validation number: nothing to check


def test_a_verdict_that_validation_reverses_is_inconclusive():
    R = _study()
    window = next(r for r in R if r["run"] == "t3-window")
    window["metrics"]["bbox/AP"] = 30.0  # validation: window-only beats hybrid (15.x)
    df = findings_table(R)
    row = df[(df.claim == "e") & df.statement.str.contains("window")].iloc[0]
    assert row["verdict"] == REVERSED and float(row["val difference"]) < 0 < float(
        row["difference"])
    assert "validation reverses the sign" in findings_markdown(df, "toy")


def test_pooled_sd_weights_by_degrees_of_freedom():
    assert pooled_sd([[1.0, 3.0], [5.0], [2.0, 2.0, 2.0]]) == pytest.approx((2 / 3) ** 0.5)
    assert pooled_sd([[1.0]]) is None


def test_images_to_match_interpolates_random_curve():
    curve = {3.0: 2.0, 6.0: 4.0, 12.0: 8.0}
    assert images_to_match(6.0, curve) == "9 ep"
    assert images_to_match(9.0, curve) == "> 12 ep"
    assert images_to_match(1.0, curve) == "<= 3 ep"


def _study(mae_shift=10.0):
    R = []
    for s in range(3):
        jitter = 0.1 * s
        R += [rec(f"ft-random-s{s}", "random", 5 + jitter, epochs=12),
              rec(f"ft-supervised-s{s}", "supervised", 6 + jitter),
              rec(f"ft-mocov3-s{s}", "mocov3", 6 + jitter),
              rec(f"ft-beit-s{s}", "beit", 5 + mae_shift + jitter),
              rec(f"ft-mae-s{s}", "mae", 5 + mae_shift + jitter, pretrain_epochs=6.0)]
    R += [rec("f2-random-short", "random", 1.0, serves=["F2"], schedule=0.75, epochs=3),
          rec("f2-random-mid", "random", 3.0, serves=["F2"], schedule=1.5, epochs=6),
          rec("f2-mae-short", "mae", 9.0, serves=["F2"], schedule=0.75),
          rec("t3-window", "mae", 8.0, serves=["T3"],
              overrides=["model.backbone.attention=window"]),
          rec("t3-global", "mae", 15.1, serves=["T3"],
              overrides=["model.backbone.attention=global"]),
          rec("t2-single", "mae", 12.0, serves=["T2"],
              overrides=["model.detector.multi_scale=false"]),
          rec("f3-mae-short", "mae_ep1", 7.0, serves=["F3"], kind="mae", pretrain_epochs=1.0)]
    return R


def test_findings_on_a_study_where_mae_wins():
    df = findings_table(_study())
    by = {(r["claim"], r["statement"][:20]): r for _, r in df.iterrows()}
    a_mae = next(r for k, r in by.items() if k[0] == "a" and "MAE" in k[1])
    assert a_mae["verdict"] == HOLDS and float(a_mae["difference"]) == pytest.approx(10.0)
    b = [r for k, r in by.items() if k[0] == "b"]
    assert all(r["verdict"] == CONTRADICTED for r in b)  # here supervised beats random
    d_mae = df[(df.claim == "d") & df.statement.str.startswith("MAE")].iloc[0]
    # 9.0 at 0.75 ep against random's 1.0 at 3 ep (both single-seed F2 runs)
    assert d_mae["verdict"] == HOLDS + " (low power: a single-seed side)"
    assert "random init needs > 12 ep" in d_mae["note"]
    d_sup = df[(df.claim == "d") & df.statement.str.startswith("supervised")].iloc[0]
    assert d_sup["verdict"] == f"{NO_RESULT} (no such runs in this profile)"
    e = df[df.claim == "e"]
    # global ~ hybrid, hybrid >> window: each against a one-seed ablation run (low power)
    assert list(e["verdict"]) == [HOLDS + " (low power: a single-seed side)"] * 2
    assert set(df["split"]) == {"test"}
    # single-scale and the F3 pre-training lengths are one-seed runs (low power)
    assert df[df.claim == "f"].iloc[0]["verdict"] == HOLDS + " (low power: a single-seed side)"
    assert df[df.claim == "g"].iloc[0]["verdict"] == HOLDS + " (low power: a single-seed side)"
    assert all(v.startswith(NO_RESULT) for v in df[df.claim == "h"]["verdict"])
    md = findings_markdown(df, "toy")
    assert "| claim |" in md and "holds" in md


def test_findings_contradict_when_random_wins():
    df = findings_table(_study(mae_shift=-3.0))
    a = df[df.claim == "a"]
    assert set(a["verdict"]) == {CONTRADICTED}


def test_a_claim_waiting_for_runs_names_their_stage():
    R = _study()
    R.append({**rec("t4-row5", "mae", None, serves=["T4"],
                    overrides=["model.backbone.rel_pos=none"]), "state": "no run", "metrics": {}})
    R[-1]["parameters"]["pretrained_pos"] = "abs"
    df = findings_table(R, stage_of=lambda name: "t4" if name.startswith("t4") else "t1")
    h = df[df.claim == "h"]
    assert h.iloc[0]["verdict"] == f"{NO_RESULT} (stage t4)"


def test_a_profile_without_a_test_split_is_judged_on_validation():
    R = _study()
    for r in R:
        r["metrics"].pop("test/bbox/AP")
    df = findings_table(R)
    assert set(df["split"]) == {"val"}
    assert df[df.claim == "a"].iloc[0]["verdict"] == HOLDS


def test_equal_images_rows_take_the_longest_schedule_both_inits_have():
    R = _study() + [rec("f2-mae-long", "mae", 4.0, serves=["F2"], schedule=12.0)]
    df = findings_table(R)
    equal = df[(df.claim == "d") & df.statement.str.contains("equal fine-tuning images")]
    mae = equal[equal.statement.str.startswith("MAE")].iloc[0]
    # MAE's 12-epoch run (4.0, one seed) against random's 12 epochs (5.0-5.2, three seeds)
    assert mae["A"].startswith("MAE (12 ep): 4.00") and mae["B"].startswith("random (12 ep)")
    assert mae["verdict"].startswith(CONTRADICTED)
    sup = equal[equal.statement.str.startswith("supervised")].iloc[0]
    # supervised has no 12-epoch run: its Table 1 runs (3 ep) against random's 3 ep (1.0)
    assert sup["A"].startswith("supervised (3 ep)")
    assert sup["verdict"] == HOLDS + " (low power: a single-seed side)"


def test_without_any_seed_spread_the_verdict_says_so():
    diff, spread, verdict = compare([3.0], [19.0], None)
    assert diff == pytest.approx(-16.0) and spread is None
    assert verdict == f"{INCONCLUSIVE} (no seed spread yet: one seed a side)"


def test_a_run_that_feeds_no_table_is_no_inits_recipe():
    # a post-hoc check (another lr, serves nothing) must not join MAE's Table 1 group
    base = findings_table(_study())
    check = findings_table(_study() + [rec("chk-mae-lr", "mae", 50.0, serves=[])])
    assert check.drop(columns=["runs"]).equals(base.drop(columns=["runs"]))


def test_ablations_at_a_second_schedule_get_their_own_rows_and_baseline():
    # the ablations again at 12 epochs: each compared with MAE's own 12-epoch recipe run (an
    # F2 run), never with the 3-epoch Table 1 runs; F3 likewise per fine-tuning schedule
    R = _study() + [
        rec("f2-mae-long", "mae", 30.0, serves=["F2"], schedule=12.0, pretrain_epochs=6.0),
        rec("t3-window-12", "mae", 20.0, serves=["T3"], schedule=12.0,
            overrides=["model.backbone.attention=window"]),
        rec("t2-single-12", "mae", 29.9, serves=["T2"], schedule=12.0,
            overrides=["model.detector.multi_scale=false"]),
        rec("f3-mae-short-12", "mae_ep1", 18.0, serves=["F3"], schedule=12.0, kind="mae",
            pretrain_epochs=1.0)]
    df = findings_table(R)
    window = df[(df.claim == "e") & df.statement.str.contains("window")]
    assert list(window["A"].str[:24]) == ["MAE hybrid, FPN (3 ep): ", "MAE hybrid, FPN (12 ep):"]
    long = window.iloc[1]
    assert long["B"].startswith("MAE window-only (12 ep): 20.00")
    assert float(long["difference"]) == pytest.approx(10.0)
    assert long["runs"] == "f2-mae-long, t3-window-12"
    single = df[df.claim == "f"].iloc[1]
    assert float(single["difference"]) == pytest.approx(0.1)
    assert single["verdict"] == INCONCLUSIVE
    g = df[df.claim == "g"]
    assert len(g) == 2 and g.iloc[1]["runs"] == "f2-mae-long, f3-mae-short-12"
    assert float(g.iloc[1]["difference"]) == pytest.approx(12.0)
    # the global run exists at 3 epochs only: its 12-epoch row does not appear
    assert len(df[(df.claim == "e") & df.statement.str.contains("global")]) == 1
