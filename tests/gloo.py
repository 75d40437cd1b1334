"""Run a function in N CPU processes joined in a gloo process group, without a TCP port.

The group rendezvous through a file in the test's temporary directory (``file://`` init
method), so two tests (or two test sessions) can never race for the same port, as a port
picked by binding and releasing a socket could.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world_size: int, init_file: str, fn: Callable[..., None],
           args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)  # N processes on a shared 2-core machine
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        fn(rank, *args)
        # leave together: a rank that tears the group down while the other still talks to it
        # can abort the other's gloo threads at exit ("terminate called without an active
        # exception"), about one run in twelve here. Only on success: a failed rank's partner
        # would wait here forever.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_gloo(fn: Callable[..., None], tmp_path: Path, *args: Any, world_size: int = 2) -> None:
    """Call ``fn(rank, *args)`` in ``world_size`` spawned processes inside one gloo group.

    ``fn`` must be importable by the children (a module-level function of a test module);
    ``vitdet_lib.engine.distributed.init_distributed`` there reuses the group as it is.
    A failing rank raises here (``ProcessRaisedException``) with its traceback.
    """
    init_file = tmp_path / f"gloo_init_{fn.__name__}"
    init_file.unlink(missing_ok=True)  # the store must not find a previous group's file
    mp.start_processes(_entry, args=(world_size, str(init_file), fn, args), nprocs=world_size,
                       start_method="spawn")
