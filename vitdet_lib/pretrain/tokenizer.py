"""BEiT's visual tokenizer, trained here: a small discrete VAE with a Gumbel-softmax relaxation.

BEiT predicts, for each masked patch, the code that DALL-E's dVAE gives that patch. No such
tokenizer can be downloaded here, so this one is trained on the same Fashion-MNIST images before
BEiT pre-training. It is DALL-E's design shrunk: a conv encoder whose output grid is the ViT's
patch grid (so token (i, j) describes exactly patch (i, j); it reads the image at 4 pixels per
token, 32x32 for the 8x8 grid, as BEiT's tokenizer reads a half-resolution view) and outputs
logits over the vocabulary, a relaxed one-hot sample (Gumbel-softmax with an annealed temperature)
passed through a codebook into a conv decoder, an L2 reconstruction loss (DALL-E uses a
logit-Laplace likelihood) and a KL term towards the uniform prior. Images are grey, so it reads one
channel.
At tokenisation time the code is the encoder's argmax.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..io import torch_save_atomic
from .augment import crop_flip_matrix, resize, warp
from .config import TokenizerConfig


class DiscreteVAE(nn.Module):
    """Args:
        vocab_size: number of codes.
        hidden: conv width.
        grid: tokens per side (the ViT's patch grid); the tokenizer works at ``grid * 4``
            pixels (two stride-2 stages), which for Fashion-MNIST's 28x28 sources loses nothing
            and costs far less than the ViT's upsampled 64x64 view.
    """

    cell = 4  # pixels per token side at the tokenizer's own resolution

    def __init__(self, vocab_size: int, hidden: int, grid: int) -> None:
        super().__init__()
        self.vocab_size, self.grid = vocab_size, grid
        h = hidden
        self.encoder = nn.Sequential(
            nn.Conv2d(1, h, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, h, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, vocab_size, 1))
        self.codebook = nn.Conv2d(vocab_size, h, 1, bias=False)  # one-hot -> embedding
        self.decoder = nn.Sequential(
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(h, h, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(h, 1, 4, stride=2, padding=1))

    @property
    def resolution(self) -> int:
        return self.grid * self.cell

    def to_resolution(self, grey: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] -> [B, 1, grid*4, grid*4] (area-preserving when shrinking)."""
        r = self.resolution
        if grey.shape[-2:] == (r, r):
            return grey
        return F.interpolate(grey, size=(r, r), mode="bilinear", antialias=True,
                             align_corners=False)

    def logits(self, grey: torch.Tensor) -> torch.Tensor:
        """grey [B, 1, H, W] in [0, 1] -> code logits [B, K, grid, grid]."""
        return self.encoder(self.to_resolution(grey) * 2 - 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(relaxed) one-hot codes [B, K, grid, grid] -> image [B, 1, grid*4, grid*4]."""
        return (self.decoder(self.codebook(codes)) + 1) / 2

    @torch.no_grad()
    def tokenize(self, grey: torch.Tensor) -> torch.Tensor:
        """grey [B, 1, H, W] in [0, 1] -> token ids [B, grid*grid] (row-major, as the patches)."""
        return self.logits(grey).argmax(dim=1).flatten(1)

    @torch.no_grad()
    def reconstruct(self, ids: torch.Tensor) -> torch.Tensor:
        """token ids [B, grid*grid] -> image [B, 1, grid*4, grid*4]."""
        onehot = F.one_hot(ids.view(-1, self.grid, self.grid), self.vocab_size)
        return self.decode(onehot.permute(0, 3, 1, 2).float())

    def loss(self, grey: torch.Tensor, tau: float, kl_weight: float
             ) -> tuple[torch.Tensor, dict[str, float]]:
        grey = self.to_resolution(grey)
        logits = self.encoder(grey * 2 - 1)
        soft = F.gumbel_softmax(logits, tau=tau, hard=False, dim=1)
        recon = F.mse_loss(self.decode(soft), grey)
        logq = logits.log_softmax(dim=1)
        kl = (logq.exp() * (logq + math.log(self.vocab_size))).sum(dim=1).mean()
        return recon + kl_weight * kl, {"recon": float(recon.detach()), "kl": float(kl.detach())}


def codebook_stats(ids: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Codes in use and the perplexity of their empirical distribution (vocab_size = uniform)."""
    counts = torch.bincount(ids.flatten(), minlength=vocab_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": int((counts > 0).sum()), "perplexity": float(entropy.exp())}


def train_tokenizer(images: torch.Tensor, cfg: TokenizerConfig, *, img_size: int, patch_size: int,
                    crop_scale: tuple[float, float], seed: int = 0,
                    log: Callable[[dict[str, Any]], None] | None = None
                    ) -> tuple[DiscreteVAE, dict]:
    """Train a tokenizer on uint8 source images [N, h, w] (CPU; forks the RNG, seeded).

    Returns:
        the tokenizer (eval mode) and its final statistics: hard-code reconstruction MSE and
        codebook use on up to 2000 un-augmented images, training wall time.
    """
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = DiscreteVAE(cfg.vocab_size, cfg.hidden, img_size // patch_size)
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
        for step in range(cfg.steps):
            tau = cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** (step / max(cfg.steps - 1, 1))
            idx = torch.randint(len(images), (cfg.batch_size,))
            grey = warp(images[idx], crop_flip_matrix(cfg.batch_size, crop_scale), vae.resolution)
            loss, parts = vae.loss(grey, tau, cfg.kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if log is not None and (step % 50 == 0 or step == cfg.steps - 1):
                log({"type": "tokenizer", "step": step, "loss": float(loss.detach()), "tau": tau,
                     **parts})
    vae.eval()
    grey = resize(images[:2000], vae.resolution)
    ids = vae.tokenize(grey)
    mse = float(F.mse_loss(vae.reconstruct(ids).clamp(0, 1), grey))
    return vae, {"recon_mse_hard": mse, **codebook_stats(ids, cfg.vocab_size),
                 "train_wall_s": time.perf_counter() - start, "steps": cfg.steps}


def save_tokenizer(vae: DiscreteVAE, path: str, stats: dict) -> None:
    torch_save_atomic({"model": vae.state_dict(), "vocab_size": vae.vocab_size, "grid": vae.grid,
                       "hidden": vae.codebook.out_channels, "stats": stats}, path)


def load_tokenizer(path: str) -> tuple[DiscreteVAE, dict]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    vae = DiscreteVAE(obj["vocab_size"], obj["hidden"], obj["grid"])
    vae.load_state_dict(obj["model"])
    return vae.eval(), obj.get("stats", {})
