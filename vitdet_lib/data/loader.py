"""Data loading with per-rank sharding, deterministic order and augmentation, and exact resume.

Determinism contract of ``build_loader``:

- the order of an epoch is a function of ``(seed, epoch)`` only (the same permutation as
  ``torch.utils.data.DistributedSampler``), sharded as rank ``r`` of ``R`` taking every R-th
  index of it (padded by wrap-around so all ranks get the same number of batches);
- the random augmentation of a sample is a function of ``(seed, epoch, dataset index)`` only:
  each sample is drawn under its own seeded RNG, so it does not depend on ``num_workers``,
  on which worker got it, or on where the epoch was resumed;
- resume: ``loader.batch_sampler.set_epoch(epoch, start_batch=k)`` makes the next iteration
  yield batches k, k+1, ... of that epoch, exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


def collate(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """``[(image, target), ...]`` -> ``([image, ...], [target, ...])``: detection inputs differ
    in size and instance count, so they stay lists (the detector batches them itself)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch``: a 63-bit hash, so seeds of
    neighbouring samples/epochs are unrelated (not ``seed + index``)."""
    return int(
        np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    )


class SeededSamples(Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` runs ``dataset[index]`` under RNGs
    (torch, numpy, random) seeded with ``seed``, restoring the caller's RNG state afterwards
    (in the main process those generators also drive dropout and drop path)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(dataset index, sample seed)`` for one rank, resumable at any batch.

    Args:
        dataset_len: number of items.
        batch_size: items per batch on this rank.
        shuffle: a fresh permutation per epoch (seeded), else dataset order.
        seed: base seed of order and augmentation.
        num_replicas, rank: sharding; every rank must use the same ``seed``.
        drop_last: drop this rank's last incomplete batch.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        if batch_size < 1 or dataset_len < 1:
            raise ValueError(
                f"need batch_size >= 1 and a non-empty dataset, got {batch_size}, {dataset_len}"
            )
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        # Same padding as DistributedSampler: every rank gets ceil(N / R) items.
        self.samples_per_rank = math.ceil(dataset_len / num_replicas)

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch on this rank (``len()``: those left after ``start_batch``)."""
        full, rest = divmod(self.samples_per_rank, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and the first batch the next iteration yields."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} not in [0, {self.batches_per_epoch}]")
        self.epoch = epoch
        self.start_batch = start_batch

    def rank_indices(self, epoch: int) -> list[int]:
        """This rank's dataset indices for ``epoch``, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_len, generator=generator).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.samples_per_rank * self.num_replicas
        order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = self.rank_indices(self.epoch)
        epoch, start = self.epoch, self.start_batch
        # A resume applies to one pass only; the next pass (next epoch) starts at batch 0.
        self.start_batch = 0
        for b in range(start, self.batches_per_epoch):
            chunk = indices[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, epoch, i)) for i in chunk]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def _seed_worker(worker_id: int) -> None:
    # Augmentation is seeded per sample (SeededSamples); this only keeps stray numpy/random use
    # outside of samples from repeating identically in every worker.
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    distributed: bool | None = None,
    *,
    drop_last: bool = False,
    epoch: int = 0,
    start_batch: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``(images: list, targets: list)`` batches for this rank.

    Args:
        dataset: yields ``(image, target)``.
        batch_size: images per batch per rank.
        num_workers: loader processes (0: load in the main process).
        shuffle: reshuffle every epoch (train) or keep dataset order (eval).
        seed: base seed of order and augmentation; the same on every rank.
        distributed: shard over ``torch.distributed`` ranks; ``None`` does so exactly when a
            process group is initialised.
        drop_last: drop each rank's incomplete last batch (fixed batch size for training).
        epoch, start_batch: initial position; later use
            ``loader.batch_sampler.set_epoch(epoch, start_batch)`` before each epoch.
        pin_memory: pin batches for faster host-to-GPU copies.
    """
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    num_replicas, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    sampler = ResumableBatchSampler(
        len(dataset),  # type: ignore[arg-type]
        batch_size,
        shuffle=shuffle,
        seed=seed,
        num_replicas=num_replicas,
        rank=rank,
        drop_last=drop_last,
    )
    sampler.set_epoch(epoch, start_batch)
    return DataLoader(
        SeededSamples(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
        # Workers start once per epoch; for long epochs that is noise, and it keeps the
        # per-epoch state (sampler position) owned by the main process.
        persistent_workers=False,
    )


def measure_throughput(
    dataset: Dataset, num_workers: int = 2, batches: int = 20, batch_size: int = 4, warmup: int = 2
) -> float:
    """Images per second delivered by ``build_loader`` (loading + transform + collate).

    The first ``warmup`` batches (worker start-up, caches) are not timed.
    """
    loader = build_loader(dataset, batch_size, num_workers, shuffle=True, seed=0, distributed=False)
    count, start = 0, time.perf_counter()
    for b, (images, _) in enumerate(loader):
        if b == warmup:
            count, start = 0, time.perf_counter()
        count += len(images)
        if b + 1 >= warmup + batches:
            break
    elapsed = time.perf_counter() - start
    return count / elapsed if elapsed > 0 else float("nan")
