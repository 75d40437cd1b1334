"""The tuning protocol's grid widening, on synthetic AP surfaces."""
import math

from vitdet_lib.study.sweep import best_point, widen_grid

LRS, WDS = [8e-5, 1.6e-4, 3.2e-4], [0.05, 0.1, 0.2]


def surface(best_lr, best_wd):
    """A smooth AP peak at (best_lr, best_wd) in log space."""
    return lambda lr, wd: 50 - (math.log2(lr / best_lr)) ** 2 - (math.log2(wd / best_wd)) ** 2


def evaluate(f, lrs, wds):
    return {(lr, wd): f(lr, wd) for lr in lrs for wd in wds}


def test_interior_best_stops():
    assert widen_grid(evaluate(surface(1.6e-4, 0.1), LRS, WDS), LRS, WDS) is None


def test_border_best_widens_that_side_only():
    lrs, wds = widen_grid(evaluate(surface(3.2e-4, 0.1), LRS, WDS), LRS, WDS)
    assert lrs == [8e-5, 1.6e-4, 3.2e-4, 6.4e-4] and wds == WDS
    lrs, wds = widen_grid(evaluate(surface(1.6e-4, 0.05), LRS, WDS), LRS, WDS)
    assert lrs == LRS and wds == [0.025, 0.05, 0.1, 0.2]


def test_corner_widens_both_axes():
    lrs, wds = widen_grid(evaluate(surface(8e-5, 0.2), LRS, WDS), LRS, WDS)
    assert lrs == [4e-5, 8e-5, 1.6e-4, 3.2e-4] and wds == [0.05, 0.1, 0.2, 0.4]


def test_widening_converges_on_a_far_optimum():
    f, lrs, wds, rounds = surface(1.28e-3, 0.1), LRS, WDS, 0
    while (nxt := widen_grid(evaluate(f, lrs, wds), lrs, wds)) is not None:
        lrs, wds = nxt
        rounds += 1
    assert rounds == 3 and max(lrs) == 2.56e-3
    assert best_point(evaluate(f, lrs, wds)) == (1.28e-3, 0.1)


def test_failed_points_are_ignored_and_single_value_axes_fixed():
    ap = {(lr, 0.1): (float("nan") if lr == 3.2e-4 else 40.0 + lr * 1e4) for lr in LRS}
    assert best_point(ap) == (1.6e-4, 0.1)  # the NaN border point does not count
    assert widen_grid(ap, LRS, [0.1]) is None
    assert widen_grid({}, LRS, WDS) is None
    assert widen_grid({k: None for k in ap}, LRS, [0.1]) is None


def _walk(drop_path_epochs, dp_ap):
    """Walk a 2-lr sweep with fake runs; the names executed and the winner."""
    from vitdet_lib.study.profile import InitSource, StudyProfile, SweepConfig
    from vitdet_lib.study.sweep import walk_sweep

    profile = StudyProfile(name="p", sizes={"S": []}, inits={"mae": InitSource(kind="mae")})
    sweep = SweepConfig(name="hp", inits=["mae"], size="S", lr=[1e-4, 2e-4],
                        weight_decay=[0.1], drop_path=[0.0, 0.1], max_widenings=0,
                        parameters={"params": "x.yaml", "epochs": 1},
                        drop_path_epochs=drop_path_epochs)
    ran = []

    def execute(run):
        ran.append(run.name)
        dp = run.parameters["drop_path"]
        return dp_ap[dp] if run.parameters["stage"] == "drop_path" else run.parameters["lr"] * 1e4

    return ran, walk_sweep(profile, sweep, "mae", execute, echo=lambda _: None)


def test_drop_path_zero_reuses_the_grid_run_when_it_would_repeat_it():
    ran, best = _walk(None, {0.1: 1.0})  # grid AP at lr 2e-4 is 2.0: dp 0 wins
    assert ran == ["hp-mae-lr0.0001-wd0.1", "hp-mae-lr0.0002-wd0.1", "hp-mae-dp0.1"]
    assert best == (2e-4, 0.1, 0.0)
    ran, best = _walk(1, {0.1: 3.0})  # the same schedule written out: still reused
    assert "hp-mae-dp0" not in ran and best == (2e-4, 0.1, 0.1)


def test_drop_path_zero_runs_again_on_a_longer_schedule():
    ran, best = _walk(2, {0.0: 5.0, 0.1: 3.0})
    assert ran[-2:] == ["hp-mae-dp0", "hp-mae-dp0.1"] and best == (2e-4, 0.1, 0.0)
