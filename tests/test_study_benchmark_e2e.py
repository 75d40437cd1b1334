"""Benchmark your own ViT, end to end at smoke scale: a checkpoint in MAE's public layout (random
weights) goes through ``study run --add-init`` (papermill, the real fine-tune notebook) and
``study report``, and its row appears in the rendered Table 1 with the converter's report."""
import checkpoint_fakes as fakes
import pytest
import torch
import yaml

from vitdet_lib.cli import main
from vitdet_lib.study import records as rec
from vitdet_lib.study.profile import PROFILES_DIR, REPO_ROOT


@pytest.mark.slow
def test_added_checkpoint_gets_a_table1_row(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    ckpt = tmp_path / "mine.pth"
    torch.save(fakes.mae(dim=32, depth=4, patch=8, grid=4), ckpt)  # the smoke encoder's shape
    data = yaml.safe_load((PROFILES_DIR / "smoke.yaml").read_text())
    # name "smoke": the report notebook reads the shipped profile's sizes and inits
    data.update(name="smoke", results_dir=str(tmp_path / "results"),
                work_dir=str(tmp_path / "work"))
    profile = tmp_path / "smoke_bench.yaml"
    profile.write_text(yaml.safe_dump(data))
    spec = f"mine={ckpt}:auto"
    # the run and what it needs: the tuning sweep of the new init (4 tiny runs), then the run
    assert main(["study", "run", "--profile", str(profile), "--add-init", spec,
                 "--only", "ft-S-mine-ep0.5-s0"]) == 0
    out = capsys.readouterr().out
    assert "auto-detected layout mae" in out and "hp-S-mine-lr0.001-wd0.1" in out
    record = rec.read_record(rec.record_path(tmp_path / "results", "ft-S-mine-ep0.5-s0"))
    assert record["status"] == rec.SUCCESS and record["parameters"]["init_kind"] == "mae"
    report = record["init_report"]
    assert report["layout"] == "timm" and report["checkpoint"] == str(ckpt)
    assert "blocks.3.mlp.fc2.weight" in report["loaded"] and "cls_token" in report["dropped"]
    assert main(["study", "report", "--profile", str(profile), "--add-init", spec]) == 0
    table = (tmp_path / "results" / "report" / "table1.md").read_text()
    lines = table.splitlines()
    head = next(line for line in lines if line.startswith("| init"))
    row = next(line for line in lines if line.startswith("| mine"))
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["APbox"] not in ("", "no run") and cells["tuned by"] == "hp-S", table
