"""Plots and widget controls for the teaching walkthrough (``notebooks/walkthrough.ipynb``).

Every ``plot_*`` function returns a standalone ``matplotlib.figure.Figure`` (not registered with
pyplot, so nothing is shown twice); :func:`explore` puts one behind ipywidgets controls, or,
headless (papermill, tests), renders it once at the controls' default values.
"""
from __future__ import annotations

from .backbone import (
                       AttentionExplorer,
                       attention_map,
                       attention_probs,
                       capture_block_inputs,
                       plot_patches,
                       plot_pyramid,
                       plot_rel_pos,
                       plot_window_partition,
                       pyramid_features,
                       window_layout,
)
from .cost import measure_attention_cost, plot_attention_cost
from .detection import load_detector, lsj_sample, plot_lsj, plot_predictions
from .widgets import Choice, Slider, explore

__all__ = [
    "AttentionExplorer", "Choice", "Slider", "attention_map", "attention_probs",
    "capture_block_inputs", "explore", "load_detector", "lsj_sample", "measure_attention_cost",
    "plot_attention_cost", "plot_lsj", "plot_patches", "plot_predictions", "plot_pyramid",
    "plot_rel_pos", "plot_window_partition", "pyramid_features", "window_layout",
]
