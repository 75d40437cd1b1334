"""Learning curves of Table 1 / Figure 2 runs; runs that only report more stay recipes."""
import pytest

from vitdet_lib.study import curves
from vitdet_lib.study.cells import is_recipe, overrides_of, recipe_runs
from vitdet_lib.study.findings import findings_table

EVAL_AT = "train.eval_at=[0.25,0.5,0.75,1.0]"


def rec(run, init, points, *, overrides=(EVAL_AT,), state="success", serves=("T1", "F2")):
    """A Table 1 run whose validation APbox was ``points[k]`` at epoch k + 1."""
    history = [{"epoch": float(k + 1), "fraction": (k + 1) / len(points), "bbox/AP": ap,
                "bbox/AP50": 3 * ap} for k, ap in enumerate(points)]
    return {"run": run, "state": state, "serves": list(serves), "eval_history": history,
            "parameters": {"init": init, "init_kind": init, "size": "cpu",
                           "schedule_epochs": float(len(points)), "epochs": float(len(points)),
                           "overrides": list(overrides)},
            "metrics": {"bbox/AP": points[-1], "test/bbox/AP": points[-1]}}


def test_reporting_only_overrides_keep_a_run_its_recipe():
    r = rec("ft-mae-s0", "mae", [1.0, 2.0])
    assert overrides_of(r) == [] and is_recipe(r)
    ablation = rec("t2-mae-single", "mae", [1.0],
                   overrides=(EVAL_AT, "model.detector.multi_scale=false"))
    assert overrides_of(ablation) == ["model.detector.multi_scale=false"]
    assert not is_recipe(ablation)
    t4 = rec("t4-mae", "mae", [1.0], serves=("T4",))
    assert [r["run"] for r in recipe_runs([r, ablation, t4])] == ["ft-mae-s0"]


def test_findings_count_runs_that_evaluate_along_the_way():
    R = [rec(f"ft-{i}-s{s}", i, [1.0, v + 0.1 * s]) for s in range(3)
         for i, v in (("random", 2.0), ("mae", 6.0))]
    row = findings_table(R).iloc[0]  # claim (a): MAE vs random
    assert row["A"].startswith("MAE") and float(row["difference"]) == pytest.approx(4.0)


def test_learning_curves_average_seeds_per_evaluation():
    R = [rec("ft-mae-s0", "mae", [1.0, 3.0]), rec("ft-mae-s1", "mae", [2.0, 5.0]),
         rec("ft-random-s0", "random", [0.5, 1.0]),
         rec("ft-random-s1", "random", [9.0, 9.0], state="stale"),  # not current: left out
         rec("t3-mae-window", "mae", [7.0, 7.0], overrides=("model.backbone.attention=window",),
             serves=("T3",)),
         rec("f2-mae-short", "mae", [0.5], serves=("F2",)),  # one evaluation: no curve
         rec("f2-mae-long", "mae", [1.0, 2.0, 3.0, 4.0], serves=("F2",))]
    lc = curves.learning_curves(R)
    mae = lc[(lc["init"] == "mae") & (lc["schedule"] == 2.0)].reset_index()
    assert list(mae["epoch"]) == [1.0, 2.0]
    assert list(mae["APbox"]) == [1.5, 4.0] and list(mae["n"]) == [2, 2]
    assert mae["AP50"][1] == pytest.approx(12.0)
    long = lc[(lc["init"] == "mae") & (lc["schedule"] == 4.0)]
    assert list(long["APbox"]) == [1.0, 2.0, 3.0, 4.0] and set(lc["schedule"]) == {2.0, 4.0}
    rnd = lc[lc["init"] == "random"]
    assert list(rnd["APbox"]) == [0.5, 1.0] and list(rnd["n"]) == [1, 1]


def test_curves_figure_saves_with_and_without_runs(tmp_path):
    from vitdet_lib.study import plots
    from vitdet_lib.study.plots import save_figure

    full = curves.learning_curves([rec("ft-mae-s0", "mae", [1.0, 3.0])])
    for name, data in (("curves", full), ("empty", curves.learning_curves([]))):
        paths = save_figure(plots.curves_figure(data, note="test"), tmp_path, name)
        assert all(p.stat().st_size > 0 for p in paths)
