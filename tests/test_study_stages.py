"""The stage table: runs, wall time and commits per stage, read from the records alone."""
from vitdet_lib.study.profile import load_profile
from vitdet_lib.study.stages import stage_times


def rec(run, time, wall=None, commit="abc1234", status="success"):
    out = {"run": run, "status": status,
           "provenance": {"time": time, "git_commit": commit, "git_dirty": False}}
    if wall is not None:
        out["timings"] = {"wall_s": wall}
    return out


def test_stage_times_counts_measurements_without_wall_time():
    R = [rec("pretrain-mae", "2026-11-30T10:00:00+0000", wall=600),
         rec("t3-S-mae-window-ep1-s0", "2026-11-30T11:00:00+0000", wall=120),
         rec("t3-S-memory-time", "2026-11-30T11:05:00+0000"),  # a measurement: no wall_s
         rec("t5-complexity", "2026-11-30T11:06:00+0000", commit="def5678"),
         rec("f4-tide", "2026-11-30T11:07:00+0000", status="failed")]
    df = stage_times(load_profile("smoke"), R).set_index("stage")
    assert list(df.index) == ["pretrain", "ablations"]  # in the order they ran
    abl = df.loc["ablations"]
    assert abl["runs"] == 3  # the failed run is not counted, the measurements are
    assert abl["run wall min"] == 2.0
    assert abl["elapsed min"] == 8.0  # 10:58 (the window run's start) to 11:06
    assert abl["commit"] == "abc1234, def5678"
    assert df.loc["pretrain", "runs"] == 1 and df.loc["pretrain", "elapsed min"] == 10.0
