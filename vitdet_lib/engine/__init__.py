"""Fine-tuning engine: ``train(cfg)`` and ``evaluate(cfg, checkpoint)`` (``run.py``), the loop
(``trainer.py``), optimizer and schedule, checkpoints, run records and distributed helpers."""
from .run import evaluate, train
from .trainer import NonFiniteLossError, TrainData, Trainer

__all__ = ["NonFiniteLossError", "TrainData", "Trainer", "evaluate", "train"]
