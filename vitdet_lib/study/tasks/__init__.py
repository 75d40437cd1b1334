"""What the experiment notebooks call: one function per notebook family, each doing the work
and writing the run's success record (``records``). Notebooks only pass their parameters.

Every task takes the runner's common parameters (``run_name``, ``record_path``, ``work_dir``,
``launcher``, ``fallback_overrides``, ``fresh``) and returns the record.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from .finetune import finetune, load_run_experiment
from .launch import torchrun_command
from .measure import complexity, memory_time
from .pretrain import pretrain
from .tide import tide

__all__ = ["call", "complexity", "finetune", "load_run_experiment", "memory_time", "pretrain",
           "tide", "torchrun_command"]


def call(task: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """Call ``task`` with the notebook's parameters it accepts; the record keeps them all."""
    if parameters.get("torch_threads"):
        torch.set_num_threads(int(parameters["torch_threads"]))
    accepted = inspect.signature(task).parameters
    kwargs = {k: v for k, v in parameters.items() if k in accepted and k != "parameters"}
    return task(**kwargs, parameters=dict(parameters))
