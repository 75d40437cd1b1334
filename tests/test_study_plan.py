"""``study plan``: the paper profile on this machine lists every missing input at once (exit 2,
fast); a paper-shaped profile pointing at a generated COCO set and official-layout checkpoints
plans cleanly with device-hour estimates; ``study run`` refuses before starting anything."""
import json
import time
from pathlib import Path

import checkpoint_fakes as fakes
import pytest
import torch
import yaml

from vitdet_lib.cli import main
from vitdet_lib.data.scenes import write_shape_scenes
from vitdet_lib.study import runner
from vitdet_lib.study.add_init import load_benchmark_profile
from vitdet_lib.study.plan import plan
from vitdet_lib.study.profile import PROFILES_DIR, REPO_ROOT

# tiny stand-ins for ViT-B / ViT-L so that checkpoints and timed steps cost seconds
TINY_SIZES = {
    "B": ["model.backbone.embed_dim=32", "model.backbone.depth=4", "model.backbone.num_heads=2",
          "model.backbone.patch_size=8", "model.backbone.pretrain_img_size=32"],
    "L": ["model.backbone.embed_dim=48", "model.backbone.depth=4", "model.backbone.num_heads=3",
          "model.backbone.patch_size=8", "model.backbone.pretrain_img_size=32"],
}
DIMS = {"B": {"dim": 32, "heads": 2}, "L": {"dim": 48, "heads": 3}}


def test_paper_profile_here_lists_every_missing_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    start = time.perf_counter()
    rc = main(["study", "plan", "--profile", "paper", "--out", str(tmp_path / "plan"),
               "--no-measure"])
    assert rc == 2 and time.perf_counter() - start < 60
    out = capsys.readouterr().out
    paper = yaml.safe_load((PROFILES_DIR / "paper.yaml").read_text())
    used = {"B": ["supervised", "mocov3", "beit", "mae"], "L": list(paper["inits"])}
    for size, inits in used.items():
        for init in inits:
            path = paper["inits"][init].get("checkpoint")
            if path:
                assert f"checkpoint {path.format(size=size)} not found" in out, (size, init)
    for key in ("train2017", "val2017", "instances_train2017.json", "instances_val2017.json"):
        folder = "annotations/" if key.endswith("json") else ""
        assert f"/path/to/coco/{folder}{key} not found" in out
    saved = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert not saved["ok"] and len(saved["problems"]) >= 16
    assert ({"ft-B-mae-ep100-s0", "ft-L-random-ep25-s2", "f3-L-mae_ep100-ep100-s0"}
            <= {r["run"] for r in saved["rows"]})


def test_study_run_refuses_with_all_problems_and_starts_nothing(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    started = []  # should the refusal break, record the start instead of running the paper study
    monkeypatch.setattr(runner, "run_study", lambda *a, **k: started.append(a))
    results = REPO_ROOT / "results" / "study" / "paper" / "runs"
    before = results.exists()
    assert main(["study", "run", "--profile", "paper", "--only", "ft-B-*"]) == 2
    assert not started
    err = capsys.readouterr().err
    assert "nothing started" in err and "mae_pretrain_1600ep.pth not found" in err
    assert "deit_supervised_in1k.pth not found" in err and "train2017 not found" in err
    assert "/L/" not in err  # only the selected runs' inputs are checked
    assert results.exists() == before


def _paper_like(tmp_path: Path) -> Path:
    """A profile with the paper's runs and sweeps, on a generated COCO set and tiny models."""
    coco = tmp_path / "coco"
    train_ann = write_shape_scenes(coco, 16, 64, 0, split="train")
    val_ann = write_shape_scenes(coco, 4, 64, 0, split="val")
    params = tmp_path / "finetune.yaml"
    params.write_text(yaml.safe_dump({
        "base": str(PROFILES_DIR / "paper_finetune.yaml"),
        "model": {"detector": {"num_classes": 4, "image_size": 64, "fpn_channels": 32}},
        "data": {"train_images": str(coco / "images" / "train"),
                 "train_annotations": str(train_ann), "val_images": str(coco / "images" / "val"),
                 "val_annotations": str(val_ann)}}))
    data = yaml.safe_load((PROFILES_DIR / "paper.yaml").read_text())
    data.update(name="paperlike", results_dir=str(tmp_path / "results"),
                work_dir=str(tmp_path / "work"), sizes=TINY_SIZES,
                launcher={"kind": "torchrun", "nproc_per_node": 1, "nnodes": 1})
    writers = {"supervised": fakes.deit, "mocov3": fakes.mae, "beit": fakes.beit, "mae": fakes.mae}
    for name, src in data["inits"].items():
        if src.get("checkpoint"):
            src["checkpoint"] = str(tmp_path / "ckpt" / "{size}" / f"{name}.pth")
            for size, dims in DIMS.items():
                path = Path(src["checkpoint"].format(size=size))
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(writers[src["kind"]](**dims, depth=4, patch=8, grid=4), path)

    def repoint(node):
        if isinstance(node, dict):
            return {k: (str(params) if k == "params" else repoint(v)) for k, v in node.items()}
        return [repoint(v) for v in node] if isinstance(node, list) else node

    data["runs"], data["sweeps"] = repoint(data["runs"]), repoint(data["sweeps"])
    path = tmp_path / "paperlike.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_paper_shaped_profile_plans_cleanly_with_costs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    profile = _paper_like(tmp_path)
    mine = tmp_path / "mine" / "{size}.pth"
    mine.parent.mkdir()
    for size, dims in DIMS.items():
        torch.save(fakes.mae(**dims, depth=4, patch=8, grid=4), str(mine).format(size=size))
    out = tmp_path / "plan"
    rc = main(["study", "plan", "--profile", str(profile), "--out", str(out),
               "--add-init", f"mine={mine}:auto"])
    text = capsys.readouterr().out
    assert rc == 0, text
    saved = json.loads((out / "plan.json").read_text())
    rows = {r["run"]: r for r in saved["rows"]}
    assert saved["ok"] and not saved["problems"]
    ft = rows["ft-B-mine-ep100-s0"]
    assert {"T1", "F2"} <= set(ft["serves"]) and rows["ft-L-mine-ep25-s1"]["init_kind"] == "mae"
    assert ft["iterations"] == round(100 * 16 / 64)
    assert rows["ft-B-random-ep100-s0"]["iterations"] == round(4 * 100 * 16 / 64)  # 4x schedule
    hours = ft["device_hours"]
    assert len(hours) == 4 and sum("(measured)" in k for k in hours) == 1
    assert all(h > 0 for h in hours.values())
    # weights + AdamW's two moments, in the 2 kept checkpoints and last.pth
    assert ft["checkpoint_gb"] == pytest.approx(ft["params"] * 12 * 3 / 1e9)
    here = next(h for k, h in hours.items() if "(measured)" in k)
    step = ft["step_s"] * (64 / 1) * ft["iterations"] / 3600
    assert here == pytest.approx(step)
    assert all(d["source"] == "estimated" and "not measured" in d["basis"]
               for d in saved["devices"][1:])
    assert saved["checkpoints"][str(mine).format(size="L")]["layout"] == "timm"
    assert "hp-B-mine-lr8e-05-wd0.05" in rows  # the tuning protocol applies to the new init
    csv_head = (out / "plan.csv").read_text().splitlines()[0]
    assert "device_hours[H100 SXM (estimated)]" in csv_head
    assert list((REPO_ROOT / "work_dirs" / "plan_cache").glob("*.json"))


def test_plan_finds_data_and_checkpoint_faults_together(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    prof = _paper_like(tmp_path)
    coco = tmp_path / "coco"
    (coco / "images" / "train" / "000003.png").unlink()
    ann = json.loads((coco / "annotations" / "instances_val.json").read_text())
    ann["categories"] = ann["categories"][:3]
    (coco / "annotations" / "instances_val.json").write_text(json.dumps(ann))
    torch.save(fakes.mae(dim=64, depth=4, patch=8, grid=4), tmp_path / "ckpt" / "B" / "mae.pth")
    result = plan(load_benchmark_profile(prof, echo=lambda _: None), measure=False)
    text = "\n".join(result.problems)
    assert "1 image file(s) of" in text and "000003.png" in text  # sampled existence check
    assert "num_classes=4, but" in text and "has 3 categories" in text
    assert "unknown category id 4" in text  # the dataset validator's own findings
    assert "B/mae.pth does not load as init.kind=mae" in text and "width" in text
    assert len(result.problems) == 4


def test_image_check_is_sampled_unless_full(tmp_path, monkeypatch):
    from vitdet_lib.study import validate

    ann = write_shape_scenes(tmp_path, 9, 32, 0, split="train")
    (tmp_path / "images" / "train" / "000001.png").unlink()  # not in a 3-image sample (0, 3, 6)
    monkeypatch.setattr(validate, "SAMPLED_IMAGES", 3)
    images = str(tmp_path / "images" / "train")
    info, problems = validate.Validator().coco_split(images, str(ann))
    assert info.images == 9 and info.checked_files == 3 and not problems
    info, problems = validate.Validator(full=True).coco_split(images, str(ann))
    assert info.checked_files == 9 and "000001.png" in problems[0] and "its images" in problems[0]


def test_launcher_devices():
    from vitdet_lib.study.launcher import LauncherConfig, LauncherKind
    from vitdet_lib.study.validate import Validator

    v = Validator()
    slurm = LauncherConfig(kind=LauncherKind.SLURM, nodes=2, gpus_per_node=8)
    assert v.launcher(slurm, "auto") == 16 and not v.problems  # the cluster allocates them
    assert v.launcher(LauncherConfig(kind=LauncherKind.TORCHRUN), "auto") == 1
    assert not v.problems
    if torch.cuda.device_count() < 8:
        assert v.launcher(LauncherConfig(kind=LauncherKind.TORCHRUN, nproc_per_node=8), "auto") == 8
        assert "needs 8 CUDA devices" in v.problems.lines()[0]
