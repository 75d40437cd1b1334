"""Backbone initialisation from official ViT checkpoints (MAE, MoCo v3, DeiT, BEiT) and ours.

``initialize_backbone(vit, InitConfig(...))`` reads, converts, resizes and strictly loads a
checkpoint into the detection ViT and returns a :class:`LoadReport`; ``vitdet-bench convert``
runs the same function from the command line.
"""
from .init import AbsPosInit, InitConfig, InitKind, RelPosInit, resolve_pos_init
from .layouts import CheckpointLayout, SourceViT, detect_layout, read_state, unwrap_state
from .load import initialize_backbone, read_source
from .read import load_model_state, model_state_of, read_checkpoint_file
from .report import CheckpointError, LoadReport, ShapeChange

__all__ = [
    "AbsPosInit", "CheckpointError", "CheckpointLayout", "InitConfig", "InitKind", "LoadReport",
    "RelPosInit", "ShapeChange", "SourceViT", "detect_layout", "initialize_backbone",
    "load_model_state", "model_state_of", "read_checkpoint_file", "read_source", "read_state",
    "resolve_pos_init", "unwrap_state",
]
