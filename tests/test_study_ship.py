"""The shipped detector follows the best Table 1 / Figure 2 recipe run on validation APbox."""
import torch

from vitdet_lib.study import records as rec
from vitdet_lib.study.ship import DETECTOR_NAME, ship_best_detector


def _run(root, name, val_ap, test_ap, *, checkpoint=True, serves=("T1", "F2")):
    work = root / "work" / name
    work.mkdir(parents=True)
    if checkpoint:
        torch.save({"model": {"w": torch.full((2,), val_ap)}, "optimizer": {"x": 1},
                    "config": {"name": name}}, work / "last.pth")
    record = {"run": name, "status": "success", "serves": list(serves),
              "parameters": {"init": name.split("-")[1], "serves": list(serves)},
              "metrics": {"bbox/AP": val_ap, "test/bbox/AP": test_ap},
              "artifacts": {"work_dir": str(work)}}
    rec.write_json_atomic(rec.record_path(root, name), record)


def _export_of(root, name):
    return (rec.read_record(rec.record_path(root, name)).get("artifacts") or {}).get("export")


def test_best_on_validation_is_shipped_and_follows_a_better_run(tmp_path):
    _run(tmp_path, "ft-mae-s0", 20.0, 10.0)
    _run(tmp_path, "ft-beit-s0", 15.0, 30.0)  # better on test: must not matter
    _run(tmp_path, "t2-mae-single", 40.0, 40.0, serves=("T2",))  # not a Table 1 run
    names = {"ft-mae-s0", "ft-beit-s0", "t2-mae-single"}
    info = ship_best_detector(tmp_path, names, echo=lambda _: None)
    assert info["run"] == "ft-mae-s0"
    shipped = torch.load(tmp_path / "checkpoints" / DETECTOR_NAME, weights_only=True)
    assert set(shipped) == {"model", "config"} and shipped["model"]["w"].dtype == torch.float16
    assert _export_of(tmp_path, "ft-mae-s0")["sha256"] == info["sha256"]

    assert ship_best_detector(tmp_path, names, echo=lambda _: None)["run"] == "ft-mae-s0"
    _run(tmp_path, "ft-random-s1", 25.0, 5.0)
    info = ship_best_detector(tmp_path, names | {"ft-random-s1"}, echo=lambda _: None)
    assert info["run"] == "ft-random-s1"
    assert _export_of(tmp_path, "ft-mae-s0") is None  # one record names the shipped file


def test_a_best_run_without_its_checkpoint_gives_way_to_the_next(tmp_path):
    _run(tmp_path, "ft-mae-s0", 30.0, 10.0, checkpoint=False)  # ran on another machine
    _run(tmp_path, "ft-beit-s0", 15.0, 30.0)
    said = []
    info = ship_best_detector(tmp_path, {"ft-mae-s0", "ft-beit-s0"}, echo=said.append)
    assert info["run"] == "ft-beit-s0" and "has no checkpoint here" in said[0]


def test_a_figure2_run_of_a_recipe_can_be_the_shipped_detector(tmp_path):
    _run(tmp_path, "ft-random-s0", 19.0, 19.0)
    _run(tmp_path, "f2-mae-ep12", 25.0, 26.0, serves=("F2",))  # a longer schedule, same recipe
    _run(tmp_path, "t3-mae-global", 30.0, 30.0, serves=("T3",))  # an ablation: never shipped
    info = ship_best_detector(tmp_path, {"ft-random-s0", "f2-mae-ep12", "t3-mae-global"},
                              echo=lambda _: None)
    assert info["run"] == "f2-mae-ep12"
