"""Pre-training records read back: loss curves and a frozen-feature table across methods."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_loss_curves(logs: dict[str, str | Path], path: str | Path) -> Path:
    """One panel per method: step loss (and lr on a twin axis) against epochs. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(3.2 * len(logs), 2.8), squeeze=False)
    for ax, (name, log_path) in zip(axes[0], logs.items()):
        steps = [r for r in read_log(log_path) if r.get("type") == "step"]
        ax.plot([r["epoch"] for r in steps], [r["loss"] for r in steps], color="C0")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss", color="C0")
        twin = ax.twinx()
        twin.plot([r["epoch"] for r in steps], [r["lr"] for r in steps], color="C1", lw=0.8)
        twin.set_ylabel("lr", color="C1")
        twin.tick_params(labelsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def eval_table(evals: dict[str, str | Path]) -> str:
    """A markdown table of ``eval.json`` files: k-NN / probe top-1 (%), trained vs random init."""
    cols = ("knn_cls", "knn_mean", "probe_cls", "probe_mean")
    lines = ["| method | init | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for name, path in evals.items():
        result = json.loads(Path(path).read_text())
        for init in ("trained", "random_init"):
            if init in result:
                row = result[init]
                lines.append(f"| {name} | {init} | "
                             + " | ".join(f"{100 * row[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)
