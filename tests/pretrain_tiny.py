"""Tiny pre-training configs and data shared by the ``test_pretrain_*`` files."""
from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from vitdet_lib.pretrain.config import PretrainConfig, load_pretrain_config
from vitdet_lib.pretrain.data import load_eval_images

# depth 4, width 64, 2 heads, 32x32 input with patch 8 -> a 4x4 grid
TINY_ENCODER = {"embed_dim": 64, "depth": 4, "num_heads": 2, "img_size": 32}
METHODS = ("supervised", "mocov3", "beit", "mae")


def tiny_cfg(method: str, **sections) -> PretrainConfig:
    data = {
        "method": method,
        "encoder": dict(TINY_ENCODER),
        "train": {"epochs": 2, "batch_size": 32, "batch_per_device": 32, "lr": 2e-3,
                  "warmup_epochs": 0.25, "log_every": 1, "device": "cpu"},
        "eval": {"bank_images": 200, "test_images": 100, "probe_epochs": 5, "batch_size": 100},
    }
    if method == "mocov3":
        data["mocov3"] = {"dim": 32, "mlp_dim": 64}
    if method == "beit":
        data["beit"] = {"min_block_patches": 2,
                        "tokenizer": {"vocab_size": 32, "hidden": 16, "steps": 30,
                                      "batch_size": 32, "lr": 3e-3}}
    if method == "supervised":
        data["supervised"] = {"rand_augment_ops": 0, "crop_scale": [0.6, 1.0]}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return load_pretrain_config(data)


@functools.lru_cache(maxsize=2)
def train_images(num: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num`` Fashion-MNIST train images (uint8 [N, 28, 28]) and labels."""
    return load_eval_images("train", num)


@contextlib.contextmanager
def one_thread_only():
    """Tiny models run fastest on one thread, and on a loaded shared machine a second thread
    can make them ~100x slower (OpenMP workers waiting for a busy core)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def one_thread():
    """Imported by the test modules: each test runs with one torch thread."""
    with one_thread_only():
        yield
