"""Checkpoint files that cannot be read say what they are; models that do not fit say how."""
from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vitdet_lib.checkpoint import (
    CheckpointError,
    InitConfig,
    initialize_backbone,
    load_model_state,
    read_checkpoint_file,
)
from vitdet_lib.config import vit_config
from vitdet_lib.errors import InputError
from vitdet_lib.model.vit import ViT


def write(path: Path, kind: str) -> Path:
    if kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("weights/readme.txt", "hi")
    elif kind == "legacy_truncated":
        torch.save({"w": torch.zeros(100)}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "random":
        path.write_bytes(bytes([7]) + os.urandom(500))
    elif kind == "object":
        torch.save({"model": {}, "loss": nn.MSELoss()}, path)
    return path


@pytest.mark.parametrize("kind,expected", [
    ("npy", "a NumPy .npy array, not a torch checkpoint"),
    ("zip", "a zip archive, but not a torch checkpoint (no data.pkl inside)"),
    ("legacy_truncated", "truncated or corrupt legacy torch/pickle file (100 bytes)"),
    ("random", "not a torch checkpoint (unrecognised first bytes 07 "),
    ("object", "holds pickled Python objects other than tensors"),
])
def test_file_kinds(tmp_path, kind, expected):
    path = write(tmp_path / "ck.pth", kind)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint_file(path)
    assert str(err.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(err.value) and isinstance(err.value, InputError)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"none\.pth: no such file"):
        read_checkpoint_file(tmp_path / "none.pth")
    with pytest.raises(CheckpointError, match="is a directory, not a file"):
        read_checkpoint_file(tmp_path)


def test_legacy_format_and_namespace_still_load(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1)}, path,
               _use_new_zipfile_serialization=False)
    assert read_checkpoint_file(path)["args"].lr == 1


class Tiny(nn.Module):
    def __init__(self, width: int = 4, extra: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, 2)
        if extra:
            self.c = nn.Linear(2, 2)


def test_load_model_state_summarises_every_kind_of_misfit():
    ck = {"model": {**{f"module.{k}": v for k, v in Tiny(8).state_dict().items()},
                    **{f"z{i}": torch.zeros(1) for i in range(7)}}}
    model = Tiny(4, extra=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_model_state(model, ck, "ck.pth")
    text = str(err.value)
    assert text.startswith("ck.pth does not fit the configured model")
    assert "2 missing key(s) the model needs: c.weight, c.bias" in text
    assert "7 unexpected key(s): z0, z1, z2, z3, z4 (+2 more)" in text
    assert "3 shape mismatch(es), checkpoint vs model: a.weight [8, 8] vs [4, 4]" in text
    for key, value in model.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[key]), key


def test_load_model_state_loads_a_fitting_bare_state_dict():
    source, target = Tiny(), Tiny()
    load_model_state(target, source.state_dict(), "bare.pth")
    assert torch.equal(target.a.weight, source.a.weight)


def test_backbone_init_errors_name_the_checkpoint(tmp_path):
    vit = ViT(vit_config("tiny", embed_dim=32, depth=4, num_heads=2, pretrain_img_size=32),
              img_size=64)
    path = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 7, 7)}}, path)
    with pytest.raises(CheckpointError) as err:
        initialize_backbone(vit, InitConfig("mae", checkpoint=str(path)))
    assert str(err.value).startswith(f"{path} (init.kind=mae): ")
    assert "not a ViT" in str(err.value)
