"""Every CLI error is a short message on stderr naming the file / key, with exit code 2 for bad
input, 1 for a failed run, 130 for an interrupt; nothing is written or lost on the way."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from coco_files import write_coco
from PIL import Image

from vitdet_lib import bench, cli
from vitdet_lib.engine import run as engine_run
from vitdet_lib.experiment import load_experiment
from vitdet_lib.model import build_detector

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke_shapes.yaml"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")  # logging's asctime


@pytest.fixture
def params(tmp_path: Path) -> Path:
    """The smoke recipe on the hand-made set, 1 iteration, output under tmp_path/run."""
    images, ann = write_coco(tmp_path / "data")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(SMOKE), "output_dir": str(tmp_path / "run"),
        "data": {"generated": None, "train_images": str(images), "train_annotations": str(ann),
                 "val_images": str(images), "val_annotations": str(ann)},
        "train": {"max_iters": 1, "eval_at": [1.0], "batch_size": 1, "batch_per_device": 1},
    }))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """stderr without the timestamped log lines the train/eval commands emit."""
    return [line for line in err.splitlines() if not LOG_LINE.match(line)]


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITDET_DEBUG", raising=False)


# ----------------------------------------------------------------------------- params


def test_scalar_for_a_list_key_names_the_key(params, capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(params), "--set", "train.eval_at=2")
    assert code == 2
    assert error_lines(err)[0].startswith("vitdet-bench train: error: --set overrides: "
                                          "params.train.eval_at: expected a list, got 2")
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: {depth: 6\n")
    code, _, err = run_cli(capsys, "train", str(bad))
    assert code == 2
    assert f"error: {bad}:3:1: YAML syntax error" in err and len(err.splitlines()) == 1


def test_yaml_error_in_a_set_value_names_the_override(params, capsys):
    code, _, err = run_cli(capsys, "train", str(params), "--set", "train.eval_at=[1")
    assert code == 2
    assert err.startswith("vitdet-bench train: error: --set train.eval_at=[1 (line 1, column 3): "
                          "YAML syntax error")
    code, _, err = run_cli(capsys, "pretrain", "--method", "mae", "--out", "unused",
                           "--set", "train.epochs=[1")
    assert code == 2 and "YAML syntax error" in err and len(err.splitlines()) == 1


def test_depth_error_names_its_key(params, capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(params), "--set", "model.backbone.depth=6")
    assert code == 2
    assert "model.backbone.depth" in error_lines(err)[0] and "multiple of 4" in err
    assert not (tmp_path / "run").exists()


def test_missing_params_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml not found" in err


# ----------------------------------------------------------------------------- data


def test_bad_images_all_reported_before_anything_is_written(params, capsys, tmp_path):
    images = tmp_path / "data" / "images"
    (images / "0.png").unlink()  # missing
    (images / "1.png").write_bytes(b"")  # zero bytes
    Image.new("RGB", (60, 64)).save(images / "2.png")  # wrong size
    code, _, err = run_cli(capsys, "train", str(params))
    assert code == 2
    lines = error_lines(err)
    assert lines[0] == (f"vitdet-bench train: error: {tmp_path / 'data' / 'instances.json'}: "
                        f"3 problem(s) in this dataset (images in {images}):")
    assert f"{images / '0.png'}: image file missing (image id 0)" in lines[1]
    assert f"{images / '1.png'}: empty image file (0 bytes) (image id 1)" in lines[2]
    assert f"{images / '2.png'}: image is 60x64 but the annotations say 64x64" in lines[3]
    assert not (tmp_path / "run").exists()  # no config.yaml, no checkpoint


def test_corrupt_image_and_bad_annotation_reported_together(params, capsys, tmp_path):
    (tmp_path / "data" / "images" / "2.png").write_bytes(b"not a png at all")
    ann = tmp_path / "data" / "instances.json"
    data = json.loads(ann.read_text())
    data["annotations"][1]["category_id"] = 9
    ann.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "train", str(params))
    assert code == 2
    assert "2 problem(s)" in err
    assert f"{ann}: unknown category id 9 (image id 1, annotation id 101)" in err
    assert "2.png: unreadable image" in err


# ----------------------------------------------------------------------------- checkpoints


def detector_checkpoint(params: Path, path: Path, **backbone) -> Path:
    cfg = load_experiment(params, [f"model.backbone.{k}={v}" for k, v in backbone.items()])
    torch.save({"model": build_detector(cfg.model).state_dict(), "iteration": 7}, path)
    return path


@pytest.mark.parametrize("content,expected", [
    (b"", "empty file (0 bytes)"),
    (b"hello, I am text\n", "a text file, not a torch checkpoint (it starts with 'hello, I am"),
    ("truncate", "truncated zip archive"),
    ("list", "holds a list, not a state dict"),
    ("nodict", "a dict without model weights: expected 'model'"),
])
def test_unreadable_checkpoint_is_one_line_naming_the_file(params, capsys, tmp_path, content,
                                                           expected):
    ck = tmp_path / "ck.pth"
    if content == "truncate":
        torch.save({"model": {"w": torch.zeros(1000)}}, ck)
        ck.write_bytes(ck.read_bytes()[:2000])
    elif content == "list":
        torch.save([1, 2], ck)
    elif content == "nodict":
        torch.save({"epoch": 3, "lr": 0.1}, ck)
    else:
        ck.write_bytes(content)
    before = ck.read_bytes()
    code, _, err = run_cli(capsys, "eval", str(params), "--checkpoint", str(ck))
    assert code == 2
    (line,) = error_lines(err)
    assert line.startswith(f"vitdet-bench eval: error: {ck}") and expected in line
    assert ck.read_bytes() == before and not (tmp_path / "run").exists()


def test_checkpoint_of_another_architecture_is_summarised(params, capsys, tmp_path):
    ck = detector_checkpoint(params, tmp_path / "wide.pth", embed_dim=64)
    code, _, err = run_cli(capsys, "eval", str(params), "--checkpoint", str(ck))
    assert code == 2
    (line,) = error_lines(err)
    assert f"{ck} does not fit the configured model" in line
    assert "shape mismatch(es), checkpoint vs model: backbone.vit.pos_embed [1, 8, 8, 64] vs " \
           "[1, 8, 8, 32]" in line
    assert "more)" in line and line.count("] vs [") == 5  # first 5 of many, then a count


def test_eval_prints_where_it_wrote_predictions(params, capsys, tmp_path):
    ck = detector_checkpoint(params, tmp_path / "model.pth")
    code, out, _ = run_cli(capsys, "eval", str(params), "--checkpoint", str(ck))
    assert code == 0
    folder = tmp_path / "run" / "eval_model"
    assert f"wrote {folder}/: coco_results.json (predictions), metrics.json, record.json" in out
    assert (folder / "coco_results.json").is_file() and (folder / "record.json").is_file()


def test_init_checkpoint_error_stops_training_before_writing(params, capsys, tmp_path):
    ck = tmp_path / "mae.pth"
    ck.write_text("not a checkpoint")
    code, _, err = run_cli(capsys, "train", str(params), "--set", "init.kind=mae",
                           "--set", f"init.checkpoint={ck}")
    assert code == 2 and f"error: {ck}: a text file" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- exit codes


class TrainingInterrupted(Exception):  # stands in for the loop's class, matched by name
    pass


class NonFiniteLossError(RuntimeError):
    pass


@pytest.mark.parametrize("error,code,first", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (TrainingInterrupted("saved /x/last.pth; resume with: vitdet-bench train p.yaml"), 130,
     "interrupted: saved /x/last.pth"),
    (NonFiniteLossError("non-finite loss at iteration 3"), 1, "non-finite loss at iteration 3"),
    (RuntimeError("boom\nline two"), 1, "unexpected RuntimeError: boom"),
])
def test_failures_map_to_exit_codes(params, capsys, monkeypatch, error, code, first):
    def fail(cfg, **kwargs):
        raise error

    monkeypatch.setattr(engine_run, "train", fail)
    got, _, err = run_cli(capsys, "train", str(params))
    assert got == code
    assert error_lines(err)[0].startswith(f"vitdet-bench train: error: {first}")
    assert "Traceback" not in err


def test_debug_flag_and_env_show_the_traceback(params, capsys, monkeypatch):
    with pytest.raises(Exception, match="expected a list"):
        cli.main(["--debug", "train", str(params), "--set", "train.eval_at=2"])
    monkeypatch.setenv("VITDET_DEBUG", "1")
    with pytest.raises(Exception, match="expected a list"):
        cli.main(["train", str(params), "--set", "train.eval_at=2"])
    monkeypatch.setenv("VITDET_DEBUG", "0")
    assert cli.main(["train", str(params), "--set", "train.eval_at=2"]) == 2


def test_other_subcommands_report_bad_input_alike(capsys, tmp_path):
    code, _, err = run_cli(capsys, "complexity", "--size", "huge")
    assert code == 2 and err.startswith("vitdet-bench complexity: error: ")
    assert "unknown ViT size 'huge'" in err.splitlines()[0]
    code, _, err = run_cli(capsys, "bench", "--size", "huge", "--json", str(tmp_path / "b.json"))
    assert code == 2 and "unknown ViT size 'huge'" in err and not (tmp_path / "b.json").exists()
    ck = tmp_path / "empty.pth"
    ck.write_bytes(b"")
    code, _, err = run_cli(capsys, "convert", "--kind", "mae", "--checkpoint", str(ck), "--out",
                           str(tmp_path / "vit.pth"))
    assert code == 2 and f"convert: error: {ck}: empty file" in err
    assert not (tmp_path / "vit.pth").exists()
    code, _, err = run_cli(capsys, "pretrain-eval", "--checkpoint", str(ck))
    assert code == 2 and f"pretrain-eval: error: {ck}: empty file" in err
    code, _, err = run_cli(capsys, "pretrain", "--method", "mae", "--out", str(tmp_path / "pt"),
                           "--set", "train.epochs=x")
    assert code == 2 and "train.epochs: expected a number, got 'x'" in err
    assert not (tmp_path / "pt").exists()


# ----------------------------------------------------------------------------- bench output


def test_bench_writes_under_work_dirs_by_default(capsys, tmp_path, monkeypatch):
    assert bench.DEFAULT_OUT.parts[0] == "work_dirs"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(bench.DEFAULT_OUT / "x.json")],
                             cwd=ROOT, check=False).returncode
    assert ignored == 0  # git-ignored, so a default run never touches committed results
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "bench", "--parts", "probe", "--size", "mini",
                           "--probe-size", "64", "--threads", "1")
    assert code == 0
    written = tmp_path / "work_dirs" / "bench" / "bench_mini_cpu.json"
    assert written.is_file() and f"wrote {Path('work_dirs/bench/bench_mini_cpu.json')}" in out
    assert not (tmp_path / "results").exists()


# ----------------------------------------------------------------------------- true CLI


def cli_process(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "VITDET_DEBUG"}
    environ.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "vitdet_lib.cli", *argv], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300, check=False)


def test_subprocess_yaml_error_exit_2_and_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    proc = cli_process("train", str(bad))
    assert proc.returncode == 2
    expected = (f"vitdet-bench train: error: {bad}:2:1: YAML syntax error: while parsing a "
                f"flow sequence, expected ',' or ']', but got '<stream end>'; fix the syntax")
    assert proc.stderr.splitlines() == [expected]


def test_subprocess_truncated_checkpoint_and_debug_traceback(tmp_path):
    ck = tmp_path / "trunc.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, ck)
    ck.write_bytes(ck.read_bytes()[:1500])
    argv = ("convert", "--kind", "mae", "--checkpoint", str(ck), "--out", str(tmp_path / "o.pth"))
    proc = cli_process(*argv)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith(
        f"vitdet-bench convert: error: {ck}: truncated zip archive (1500 bytes")
    assert len(proc.stderr.splitlines()) == 1
    debug = cli_process(*argv, env={"VITDET_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "CheckpointError" in debug.stderr.splitlines()[-1]
    assert not (tmp_path / "o.pth").exists()


def test_eval_shows_progress_on_a_terminal_only(params, capsys, tmp_path, monkeypatch):
    ck = detector_checkpoint(params, tmp_path / "model.pth")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["eval", str(params), "--checkpoint", str(ck)]) == 0
    assert "eval:   0%" in capsys.readouterr().err  # tqdm's bar (drawn at start; later
    # refreshes depend on timing, and leave=False clears it at the end)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert cli.main(["eval", str(params), "--checkpoint", str(ck)]) == 0
    assert "eval:" not in capsys.readouterr().err
