"""Walkthrough: measured attention cost against the token count, per layout."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..config import AttentionLayout, vit_config
from ..model import ViT
from ..profiling import count_flops, time_call
from ._draw import new_axes

# ----------------------------------------------------------------------------- 7. cost


def measure_attention_cost(grids: Sequence[int], *, window_size: int = 8, embed_dim: int = 64,
                           num_heads: int = 2, depth: int = 4, patch_size: int = 8,
                           time_iters: int = 3, threads: int = 1) -> pd.DataFrame:
    """Measured forward FLOPs (torch's counter: a multiply-add = 2 FLOPs) and CPU seconds (best
    of ``time_iters`` calls) of a small ViT whose blocks are all global or all windowed, for
    square token grids ``grids``, timed on ``threads`` CPU threads (one thread is the least
    disturbed by other work on a shared machine)."""
    rows = []
    with _threads(threads):
        for g in grids:  # both layouts back to back, so a burst of load on the machine hits both
            for layout in (AttentionLayout.GLOBAL, AttentionLayout.WINDOW):
                rows.append({"layout": layout.value, "grid": g, "tokens": g * g,
                             **_cost(layout, g, window_size, embed_dim, num_heads, depth,
                                     patch_size, time_iters)})
    return pd.DataFrame(rows)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _cost(layout: AttentionLayout, g: int, window_size: int, embed_dim: int, num_heads: int,
          depth: int, patch_size: int, time_iters: int) -> dict[str, float]:
    cfg = vit_config("mini", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                     patch_size=patch_size, pretrain_img_size=window_size * patch_size,
                     attention=layout, drop_path_rate=0.0)
    vit = ViT(cfg, img_size=g * patch_size).eval()
    x = torch.randn(1, 3, g * patch_size, g * patch_size)
    with torch.no_grad():
        flops = count_flops(lambda: vit(x))
        vit(x)  # warm-up
        # the fastest of several calls (at least time_iters, and 0.2 s of them): on a shared
        # CPU, load only ever adds time
        times: list[float] = []
        while len(times) < time_iters or sum(times) < 0.2:
            times.append(time_call(lambda: vit(x), torch.device("cpu"), iters=1, warmup=0))
    return {"gflops": flops / 1e9, "seconds": min(times)}


def plot_attention_cost(df: pd.DataFrame, window_size: int) -> Figure:
    """Measured cost vs tokens on log-log axes, with the slope of each curve's last segment."""
    fig, ax = new_axes(2, size=4.0)
    panels = ((ax[0, 0], "gflops", "GFLOPs (measured)"), (ax[0, 1], "seconds", "CPU s / forward"))
    for a, col, label in panels:
        for layout, d in df.groupby("layout"):
            d = d.sort_values("tokens")
            slope = np.diff(np.log(d[col].values[-2:])) / np.diff(np.log(d["tokens"].values[-2:]))
            a.plot(d["tokens"], d[col], "o-", label=f"{layout} (last slope {slope[0]:.2f})")
        a.set_xscale("log"), a.set_yscale("log")
        for axis in (a.xaxis, a.yaxis):
            axis.set_minor_formatter(NullFormatter())
        a.set_xlabel("tokens hw"), a.set_ylabel(label)
        a.legend(fontsize=8)
    ax[0, 0].set_title(f"global ~ (hw)^2, windowed ~ r^2 hw (r={window_size})", fontsize=9)
    return fig
