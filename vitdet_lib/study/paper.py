"""The paper's numbers as data (docs/paper.md), each with its source and confidence.

``confidence``: ``paper text`` (stated in the text of Li et al. 2021, arXiv:2111.11429; each
number's section in docs/paper.md) or ``lower`` (other public sources, marked so in
every table). Keys: ``table``, ``row``/``col`` in that table's terms, ``value``, ``unit``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

PAPER_TEXT = "paper text"
LOWER = "lower"
SRC_PAPER = "Li et al. 2021 (arXiv 2111.11429), text"
SRC_MAE43 = "a paper author, MAE repository issue 43"
SRC_MIMDET = "MIMDet re-implementation"
SRC_THIRD = "third-party table"


@dataclass(frozen=True)
class PaperNumber:
    table: str
    row: str
    col: str
    value: float | str
    source: str = SRC_PAPER
    confidence: str = PAPER_TEXT

    @property
    def label(self) -> str:
        v = self.value if isinstance(self.value, str) else f"{self.value:g}"
        return v if self.confidence == PAPER_TEXT else f"{v} (lower confidence)"


NUMBERS: tuple[PaperNumber, ...] = (
    # Table 1: APbox per init (ViT-B, ViT-L); MoCo v3 "about equal to supervised"
    PaperNumber("T1", "random", "B APbox", 48.9), PaperNumber("T1", "random", "L APbox", 50.7),
    PaperNumber("T1", "supervised", "B APbox", 47.9),
    PaperNumber("T1", "supervised", "L APbox", 49.3),
    PaperNumber("T1", "mocov3", "B APbox", "~ supervised"),
    PaperNumber("T1", "mocov3", "L APbox", "~ supervised"),
    PaperNumber("T1", "mae", "B APbox", 50.3), PaperNumber("T1", "mae", "L APbox", 53.3),
    PaperNumber("T1", "beit", "B APbox", "<= 50.3 (masked)"),
    PaperNumber("T1", "beit", "L APbox", "<= 53.3 (masked)"),
    # Figure 2: MAE ViT-B at 25/50/100 epochs (lower confidence)
    PaperNumber("F2", "mae B", "25", 48.1, SRC_MAE43, LOWER),
    PaperNumber("F2", "mae B", "50", 50.1, SRC_MAE43, LOWER),
    PaperNumber("F2", "mae B", "100", 50.3, SRC_MAE43, LOWER),
    PaperNumber("F2", "mae B APmask", "25", 43.2, SRC_MAE43, LOWER),
    PaperNumber("F2", "mae B APmask", "50", 44.6, SRC_MAE43, LOWER),
    PaperNumber("F2", "mae B APmask", "100", 44.9, SRC_MAE43, LOWER),
    PaperNumber("F2", "mae B (MIMDet)", "25", 48.0, SRC_MIMDET, LOWER),
    PaperNumber("F2", "mae B (MIMDet)", "50", 50.2, SRC_MIMDET, LOWER),
    PaperNumber("F2", "mae B (MIMDet)", "100", 50.4, SRC_MIMDET, LOWER),
    # Table 2: FPN vs single scale
    PaperNumber("T2", "multi-scale (FPN)", "APbox", 50.1),
    PaperNumber("T2", "single-scale", "APbox", 48.4),
    PaperNumber("T2", "multi-scale (FPN)", "cost", "+~5% train time, +~10% inference, <1% memory"),
    # Table 3: ViT-L strategies
    PaperNumber("T3", "window", "APbox", 50.7), PaperNumber("T3", "hybrid", "APbox", 53.3),
    PaperNumber("T3", "global", "APbox",
                "~ hybrid; out of memory on 32 GB V100 without a strategy"),
    PaperNumber("T3", "global_checkpoint", "APbox", "~ hybrid, much slower"),
    # Table 4: positional information
    PaperNumber("T4", "rel-pos in fine-tuning", "APbox", "53.0 -> 53.3 (+0.2-0.3)"),
    PaperNumber("T4", "pre-trained rel-pos", "APbox", "+0.1-0.3"),
    PaperNumber("T4", "rel-pos cost", "cost", "+~25% train time, +~15% inference, +~15% memory"),
    # Figure 3: MAE ViT-L pre-training epochs
    PaperNumber("F3", "mae L", "800", 53.1), PaperNumber("F3", "mae L", "1600", 53.3),
    PaperNumber("F3", "mae L", "100..800", "large gains"),
    # Table 5: complexity
    PaperNumber("T5", "ResNet-101", "APbox (random init)", 48.9),
    PaperNumber("T5", "ViT-B", "APbox (random init)", 48.9),
    PaperNumber("T5", "ViT-B", "params M", 118.67, SRC_MIMDET, LOWER),
    PaperNumber("T5", "ViT-L", "params M", 340, SRC_THIRD, LOWER),
    PaperNumber("T5", "ViT-L", "TFLOPs", 1.9, SRC_THIRD, LOWER),
    # tuning protocol's outcome
    PaperNumber("HP", "pre-trained", "wd", 0.1), PaperNumber("HP", "random", "wd", 0.2),
    PaperNumber("HP", "all but random/mocov3", "lr", 8e-5),
    PaperNumber("HP", "random, mocov3", "lr", 1.6e-4),
    PaperNumber("HP", "ViT-B", "dp", 0.1), PaperNumber("HP", "ViT-L", "dp", 0.3),
)


def numbers(table: str) -> list[PaperNumber]:
    return [n for n in NUMBERS if n.table == table]


def lookup(table: str, row: str, col: str) -> PaperNumber | None:
    for n in NUMBERS:
        if (n.table, n.row, n.col) == (table, row, col):
            return n
    return None


def as_rows(table: str) -> list[dict[str, object]]:
    """The paper's numbers of ``table`` as rows (the 'paper' part of a rendered table)."""
    return [asdict(n) for n in numbers(table)]
