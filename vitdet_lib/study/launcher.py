"""How a profile's training runs are started: in the notebook's process, as a torchrun job,
or as SLURM jobs (``study/slurm.py``)."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class LauncherKind(str, enum.Enum):
    LOCAL = "local"  # in the notebook's own process
    TORCHRUN = "torchrun"  # a torchrun job started by the notebook (the paper's scale)
    SLURM = "slurm"  # each run a SLURM job through submitit (study/slurm.py)


@dataclass
class LauncherConfig:
    """How training runs are started.

    Args:
        kind: in-process, or ``torchrun`` across GPUs and nodes.
        nproc_per_node, nnodes: torchrun's process layout.
        rdzv_endpoint: ``host:port`` of the rendezvous (multi-node); None = single node.
        nodes, gpus_per_node, partition, time_limit_min, account: the SLURM job of each run
            (kind slurm); fine-tuning runs span ``nodes``, the others take one node.
        requeue: requeue a preempted / timed-out job; the run resumes from its ``last.pth``.
    """

    kind: LauncherKind = LauncherKind.LOCAL
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    # kind: slurm (study/slurm.py)
    nodes: int = 1
    gpus_per_node: int = 8
    partition: str | None = None
    time_limit_min: int = 72 * 60
    account: str | None = None
    requeue: bool = True
