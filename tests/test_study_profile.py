"""Study profiles: strict loading, expansion of run templates, init dependencies."""
import pytest
import yaml

from vitdet_lib.config import ConfigError
from vitdet_lib.study.profile import expand_runs, load_profile, profile_from_dict


@pytest.mark.parametrize("name", ["smoke", "cpu", "mini", "paper"])
def test_shipped_profiles_load(name):
    profile = load_profile(name)
    runs = expand_runs(profile)
    assert runs and len({r.name for r in runs}) == len(runs)
    fts = [r for r in runs if r.notebook == "finetune" and "T1" in r.serves]
    assert {r.parameters["init"] for r in fts} >= {"random", "supervised", "mocov3", "beit", "mae"}


def test_paper_profile_uses_torchrun_and_official_checkpoints():
    profile = load_profile("paper")
    assert profile.launcher.kind.value == "torchrun" and profile.launcher.nproc_per_node == 8
    runs = {r.name: r for r in expand_runs(profile)}
    mae_l = runs["ft-L-mae-ep100-s2"]
    assert mae_l.needs == ("hp-B-mae",) and "/L/" in mae_l.parameters["init_checkpoint"]
    assert mae_l.parameters["tuned_keys"] == ["lr", "weight_decay"]  # dp 0.3 stays for ViT-L
    assert runs["ft-B-random-ep100-s0"].parameters["epochs"] == 400.0  # random x4
    assert {r.stage for r in runs.values()} == {"final", "ablations"}


def test_cpu_profile_stages_seeds_and_shipped_checkpoints():
    """The cpu study: Table 1 split one seed per stage, every fine-tune starting from the
    shipped fp16 encoder of its pre-training run, and the budget's epochs as documented."""
    from vitdet_lib.study.budget import budget_epochs

    profile = load_profile("cpu")
    runs = expand_runs(profile)
    t1 = [r for r in runs if "T1" in r.serves]
    for seed in range(3):
        stage = [r for r in t1 if r.stage == f"t1-s{seed}"]
        assert sorted(r.parameters["init"] for r in stage) == sorted(
            ["random", "supervised", "mocov3", "beit", "mae"])
        assert all(r.name.endswith(f"-s{seed}") for r in stage)
    mae = next(r for r in t1 if r.parameters["init"] == "mae")
    assert mae.parameters["init_checkpoint"] == "results/study/cpu/checkpoints/pretrain-mae.pth"
    assert next(r for r in t1 if r.parameters["init"] == "random").parameters["epochs"] == 12.0
    assert profile.ship_checkpoints and not profile.stale_on_code_change
    assert {m: budget_epochs(profile, m) for m in ("supervised", "mocov3", "beit", "mae")} == {
        "supervised": 4.511, "mocov3": 1.932, "beit": 6.082, "mae": 6.226}
    for init in ("supervised", "mocov3", "beit", "mae"):  # Figure 3 / the report's epochs
        assert profile.inits[init].pretrain_epochs == budget_epochs(profile, init)
    assert {s.stage for s in profile.sweeps} == {"tune", "tune-random"}


def test_seeds_schedules_and_tuned_by_expand_and_are_checked():
    sweep = {"name": "hp", "inits": ["random"], "size": "S", "lr": [1.0], "weight_decay": [0.1],
             "parameters": {"epochs": 1}}
    p = _profile(sweeps=[sweep])
    p.inits["random"].schedule_factor = 4
    p.runs[1].seeds = [0, 3]
    p.runs[1].matrix["init"] = ["random"]
    p.runs[1].tuned_by = "hp"
    p.runs[1].parameters = {"epochs": 2}
    runs = {r.name: r for r in expand_runs(p)}
    assert set(runs) == {"pt-mae", "ft-S-random-s0", "ft-S-random-s3"}
    r = runs["ft-S-random-s3"]
    assert r.needs == ("hp-random",) and r.parameters["seed"] == 3
    assert (r.parameters["epochs"], r.parameters["schedule_epochs"]) == (8.0, 2.0)
    p.runs[1].parameters = {}
    with pytest.raises(ConfigError, match="schedule_factor 4, so the run must set `epochs`"):
        expand_runs(p)
    p.runs[1].parameters = {"epochs": 2}
    p.runs[1].matrix["init"] = ["mae"]
    with pytest.raises(ConfigError, match="does not tune init 'mae'"):
        expand_runs(p)


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sizes": {"S": []}, "runz": []}))
    with pytest.raises(ConfigError, match="runz"):
        load_profile(path)
    path.write_text(yaml.safe_dump({"runs": [{"name": "a", "notebook": "x", "paramters": {}}]}))
    with pytest.raises(ConfigError, match=r"runs\[0\].*paramters"):
        load_profile(path)


def _profile(**extra):
    data = {"name": "t", "sizes": {"S": ["a=1"]},
            "inits": {"random": {"kind": "random"},
                      "mae": {"kind": "mae", "pretrain_run": "pt-mae", "checkpoint": "last.pth"}},
            "runs": [{"name": "pt-mae", "notebook": "pretrain"},
                     {"name": "ft-{size}-{init}", "notebook": "finetune", "serves": ["T1"],
                      "matrix": {"size": ["S"], "init": ["random", "mae"]},
                      "init": "{init}", "size": "{size}"}]}
    data.update(extra)
    return profile_from_dict(data)


def test_expansion_resolves_inits_and_needs():
    runs = {r.name: r for r in expand_runs(_profile(work_dir="w"))}
    assert set(runs) == {"pt-mae", "ft-S-random", "ft-S-mae"}
    assert runs["ft-S-mae"].needs == ("pt-mae",)
    assert runs["ft-S-mae"].parameters["init_checkpoint"] == "w/pt-mae/last.pth"
    assert (runs["ft-S-random"].needs == ()
            and runs["ft-S-random"].parameters["size_overrides"] == ["a=1"])


def test_bad_references_are_errors():
    p = _profile()
    p.runs[1].matrix["init"].append("beit")
    with pytest.raises(ConfigError, match="beit"):
        expand_runs(p)
    p = _profile()
    p.runs[1].name = "ft-{sise}"
    with pytest.raises(ConfigError, match="sise"):
        expand_runs(p)
    p = _profile()
    p.runs[0].needs = ["nothing"]
    with pytest.raises(ConfigError, match="nothing"):
        expand_runs(p)


def test_pretrain_budget_sets_the_epochs_of_the_runs_that_ask_for_it():
    p = _profile(pretrain_budget={"rule": "equal_compute", "total_seconds": 100.0,
                                  "num_images": 10, "images_per_s": {"mae": 4.0, "mocov3": 1.0}})
    p.runs[0].parameters = {"method": "mocov3", "budget": True, "overrides": ["a=1"]}
    run = {r.name: r for r in expand_runs(p)}["pt-mae"]
    # 50 s each; mocov3 at 1 img/s over 10 images = 5 epochs
    assert run.parameters["overrides"] == ["a=1", "train.epochs=5.0"]
    p.runs[0].parameters = {"method": "mocov3"}
    assert "overrides" not in {r.name: r for r in expand_runs(p)}["pt-mae"].parameters
    p.runs[0].parameters = {"method": "beit", "budget": True}
    with pytest.raises(ConfigError, match="no 'beit'"):
        expand_runs(p)


def test_shipped_checkpoints_refuse_another_checkpoint_name(tmp_path):
    from vitdet_lib.study.profile import PROFILES_DIR

    data = yaml.safe_load((PROFILES_DIR / "cpu.yaml").read_text())
    data["inits"]["mae"]["checkpoint"] = "checkpoint-2.pth"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="ship_checkpoints exports each pre-training's last.pth"):
        load_profile(path)
