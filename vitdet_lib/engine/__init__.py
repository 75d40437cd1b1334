"""Training engine: ``train(cfg)`` and ``evaluate(cfg, checkpoint)`` (``run.py``); the one loop
fine-tuning and pre-training share (``loop.py`` iterations and hooks, ``step.py`` one optimizer
step, ``hooks.py``); fine-tuning on it (``trainer.py``); resume checks (``resume.py``);
optimizer, schedule, checkpoints, run records and distributed helpers."""
from .run import evaluate, train
from .trainer import NonFiniteLossError, TrainData, Trainer

__all__ = ["NonFiniteLossError", "TrainData", "Trainer", "evaluate", "train"]
