"""A detector-shaped toy model and an in-memory dataset: the training engine's test double.

They honour the same contracts as the real detector and data loader (losses dict in train
mode, detections list in eval mode; a loader built per (epoch, start batch) that shards by rank),
so the training loop, resume, accumulation and DDP can be checked in seconds. The toy model has
no BatchNorm (accumulation and data parallelism are then exactly equivalent in math) but does
draw random numbers (dropout), so a resume that forgot an RNG state would show.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from vitdet_lib.engine.distributed import DistInfo
    from vitdet_lib.engine.trainer import TrainData
    from vitdet_lib.experiment import ExperimentConfig

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


class ToyDetector(nn.Module):
    """``model(images, targets) -> {"loss_box": .., "loss_cls": ..}``; ``model(images) -> [..]``.

    Parameter names mimic the real backbone's (``pos_embed``, ``rel_pos_window_table``,
    ``gamma``, norms and biases) for the weight-decay grouping tests.

    Args:
        num_classes: classes of the toy classification head.
        width: feature width.
        dropout: dropout on the pooled features (a random draw per training forward).
        nan_at_call: make ``loss_cls`` NaN on this training forward (1-based), to test the
            non-finite loss stop.
    """

    def __init__(self, num_classes: int = 3, width: int = 8, dropout: float = 0.1,
                 nan_at_call: int | None = None) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.patch_embed = nn.Conv2d(3, width, kernel_size=4, stride=4)
        self.backbone.pos_embed = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.backbone.rel_pos_window_table = nn.Parameter(torch.zeros(7, 1))
        self.backbone.norm = nn.LayerNorm(width)
        self.backbone.gamma = nn.Parameter(torch.ones(width))
        self.box_head = nn.Linear(width, 4)
        self.cls_head = nn.Linear(width, num_classes)
        self.dropout = dropout
        self.nan_at_call = nan_at_call
        self.train_calls = 0

    def _features(self, images: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(images)  # [B, 3, H, W]
        x = self.backbone.patch_embed(x) + self.backbone.pos_embed
        x = x.mean(dim=(2, 3))  # [B, width]
        x = self.backbone.norm(x) * self.backbone.gamma
        return F.dropout(x, self.dropout, self.training)

    def forward(self, images: list[torch.Tensor],
                targets: list[dict[str, torch.Tensor]] | None = None):
        feats = self._features(images)
        # [B, 4] normalised box of the first object (the table stands in for a learned bias)
        boxes = (self.box_head(feats) + self.backbone.rel_pos_window_table[:4, 0]).sigmoid()
        logits = self.cls_head(feats)
        if not self.training:
            return [{"boxes": b[None] * img.shape[-1], "labels": l.argmax()[None] + 1,
                     "scores": l.softmax(-1).max()[None]}
                    for b, l, img in zip(boxes, logits, images)]
        assert targets is not None
        self.train_calls += 1
        size = images[0].shape[-1]
        # per-image means, so the batch loss is the mean over images (what accumulation assumes)
        target_boxes = torch.stack([t["boxes"][0] for t in targets]) / size
        labels = torch.stack([t["labels"][0] for t in targets]) - 1
        loss_cls = F.cross_entropy(logits, labels)
        if self.nan_at_call is not None and self.train_calls == self.nan_at_call:
            loss_cls = loss_cls * float("nan")
        return {"loss_box": F.l1_loss(boxes, target_boxes), "loss_cls": loss_cls}


class ToyDataset(torch.utils.data.Dataset):
    """``num_images`` random images, each with one box whose class is its brightest channel."""

    def __init__(self, num_images: int = 32, image_size: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(num_images, 3, image_size, image_size, generator=g)
        lo = torch.rand(num_images, 2, generator=g) * image_size / 2
        self.boxes = torch.cat([lo, lo + image_size / 2], dim=1)
        self.labels = self.images.mean(dim=(2, 3)).argmax(dim=1) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[i], {"boxes": self.boxes[i:i + 1], "labels": self.labels[i:i + 1]}


def toy_loader(dataset: torch.utils.data.Dataset, *, batch_size: int, epoch: int,
               start_batch: int = 0, rank: int = 0, world_size: int = 1, seed: int = 0
               ) -> Iterator[Batch]:
    """This rank's batches of one epoch from ``start_batch`` on: an epoch-seeded shuffle,
    strided across ranks, last partial batch dropped (as the real loader does)."""
    order = torch.randperm(len(dataset),
                           generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    mine = order[rank::world_size].tolist()
    for b in range(start_batch, len(mine) // batch_size):
        items = [dataset[i] for i in mine[b * batch_size:(b + 1) * batch_size]]
        yield [img for img, _ in items], [t for _, t in items]


def toy_train_data(cfg: ExperimentConfig, info: DistInfo | None = None, *,
                   num_images: int = 32, image_size: int = 16,
                   evaluate: Callable[[nn.Module, str], dict[str, float]] | None = None
                   ) -> TrainData:
    """:class:`TrainData` over a :class:`ToyDataset`, sharded for ``info``'s rank."""
    from vitdet_lib.engine.trainer import TrainData

    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    dataset = ToyDataset(num_images, image_size, seed=cfg.train.seed)

    def make_loader(epoch: int, start_batch: int) -> Iterator[Batch]:
        return toy_loader(dataset, batch_size=cfg.train.batch_per_device, epoch=epoch,
                          start_batch=start_batch, rank=rank, world_size=world,
                          seed=cfg.train.seed)

    return TrainData(num_images=num_images, make_loader=make_loader, evaluate=evaluate)
