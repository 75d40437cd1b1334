"""Pre-training images in memory and the order in which each process consumes them.

The whole Fashion-MNIST train split is 47 MB of uint8, so it stays in memory as the 28x28
sources; augmentation and upsampling happen per batch (``augment.py``). Batches are fixed by
(seed, epoch, step) alone, never by how many processes or accumulation steps share them:
step ``s`` of an epoch is images ``order[s*B:(s+1)*B]`` of that epoch's seeded permutation, rank
``r`` of ``W`` takes the ``r``-th contiguous ``B/W`` of them in micro-batches.
"""
from __future__ import annotations

import torch

from ..data.fashion import load_fashion_mnist
from .config import PretrainDataConfig


def load_pretrain_images(cfg: PretrainDataConfig,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The (subset of the) train split: uint8 [N, 28, 28] and int64 labels [N].

    A subset is a seeded random choice of ``cfg.num_images`` images (class balance kept in
    expectation), the same for every process and every resume.
    """
    images, labels = load_fashion_mnist("train", cfg.root)
    images, labels = torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
    if cfg.num_images is not None and cfg.num_images < len(images):
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        pick = pick[:cfg.num_images].sort().values
        images, labels = images[pick], labels[pick]
    return images, labels


def load_eval_images(split: str, num: int | None, root: str | None = None, offset: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``offset .. offset+num`` of a split (uint8 [n, 28, 28], int64 [n])."""
    images, labels = load_fashion_mnist(split, root)
    end = len(images) if num is None else min(len(images), offset + num)
    return torch.from_numpy(images[offset:end].copy()), torch.from_numpy(labels[offset:end].copy())


class StepSampler:
    """Indices of the images each process feeds into each optimizer step.

    Args:
        num_images: size of the training set.
        batch_size: images per optimizer step over all processes.
        batch_per_device: images per forward pass.
        rank, world_size: this process and the job size.
        seed: with the epoch, fixes the permutation.
    """

    def __init__(self, num_images: int, *, batch_size: int, batch_per_device: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0) -> None:
        per_rank, rem = divmod(batch_size, world_size)
        if rem or per_rank % batch_per_device:
            raise ValueError(f"batch_size={batch_size} must split into {world_size} process(es) "
                             f"x whole micro-batches of batch_per_device={batch_per_device}")
        if num_images < batch_size:
            raise ValueError(f"{num_images} images are fewer than one batch of {batch_size}")
        self.num_images, self.batch_size, self.per_device = num_images, batch_size, batch_per_device
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.per_rank = per_rank
        self._order: tuple[int, torch.Tensor] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_images // self.batch_size  # the last partial batch is dropped

    @property
    def accumulation(self) -> int:
        return self.per_rank // self.per_device

    def order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = (epoch, torch.randperm(self.num_images, generator=g))
        return self._order[1]

    def micro_batches(self, step: int) -> list[torch.Tensor]:
        """This rank's micro-batches (index tensors) for global optimizer step ``step``."""
        epoch, s = divmod(step, self.steps_per_epoch)
        chunk = self.order(epoch)[s * self.batch_size:(s + 1) * self.batch_size]
        mine = chunk[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        return list(mine.split(self.per_device))
