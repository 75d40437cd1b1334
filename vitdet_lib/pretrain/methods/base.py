"""What every pre-training recipe provides to the shared training loop and evaluation."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import PretrainConfig
from ..encoder import PretrainViT

Batch = dict[str, torch.Tensor]


class PretrainMethod:
    """One recipe: its network, its views of a batch, its loss and its official file layout.

    ``net``'s ``state_dict()`` is the official checkpoint's weights up to ``checkpoint_prefix``
    (``module.`` for MoCo v3, whose files were saved from a DDP wrapper); the training loop wraps
    ``net`` in DDP and hands the wrapper to :meth:`loss`.

    Args:
        cfg: the whole run's config (each method reads its own section).
    """

    checkpoint_key: str = "model"  # where the official file keeps the weights
    checkpoint_prefix: str = ""  # prefix of every weight name in the official file

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.vit = cfg.encoder.vit()
        self.img_size = self.vit.pretrain_img_size
        self.net: nn.Module = nn.Identity()

    # -- training ---------------------------------------------------------------------------

    def make_batch(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Batch:
        """Augmented views and targets of uint8 sources [B, h, w] (CPU) with labels [B]."""
        raise NotImplementedError

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the batch (what accumulation assumes) and scalars to log."""
        raise NotImplementedError

    def on_step_end(self, progress: float) -> None:
        """After each optimizer step; ``progress`` = completed fraction of the schedule."""

    def prepare(self, images: torch.Tensor, output_dir: str | None, log: Any) -> None:
        """Work before training that needs the data (BEiT trains its tokenizer here)."""

    # -- weights ----------------------------------------------------------------------------

    def encoder(self) -> PretrainViT:
        """The ViT whose weights transfer to detection (for frozen-feature evaluation)."""
        raise NotImplementedError

    def official_state(self) -> dict[str, torch.Tensor]:
        return {self.checkpoint_prefix + k: v for k, v in self.net.state_dict().items()}

    def load_official_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by :meth:`official_state`; any missing or unexpected key is an
        error that lists them all."""
        p = self.checkpoint_prefix
        bad = [k for k in state if not k.startswith(p)]
        inner = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
        result = self.net.load_state_dict(inner, strict=False)
        missing, unexpected = list(result.missing_keys), bad + list(result.unexpected_keys)
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")

    def official_checkpoint(self) -> dict[str, Any]:
        """``{checkpoint_key: weights}``, the top level of the official file."""
        return {self.checkpoint_key: self.official_state()}
