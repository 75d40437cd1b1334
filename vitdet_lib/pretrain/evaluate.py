"""What a pre-trained encoder has learnt, measured on frozen features of Fashion-MNIST.

- weighted k-NN (cosine similarity, votes ``exp(sim / T)``, as InstDisc/DINO) and a linear
  probe (standardised features, as MAE's probe normalises them with an affine-free BN), on the
  class token and on the mean of the patch tokens, for every method;
- top-1 of the supervised classifier's own head;
- MAE's reconstruction figure (originals / masked / reconstructions).

The bank / probe-training images come from the train split, the queries from the test split.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.read import read_checkpoint_file
from ..config import from_dict
from ..errors import CheckpointError
from .augment import normalize, resize
from .config import PretrainConfig
from .data import load_eval_images
from .encoder import PretrainViT
from .methods import MAENet, PretrainMethod, build_method, unpatchify
from .methods.supervised import pretrain_labels

POOLS = ("cls", "mean")


@torch.no_grad()
def extract_features(encoder: PretrainViT, images: torch.Tensor, *, img_size: int,
                     pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...],
                     batch_size: int = 250) -> dict[str, torch.Tensor]:
    """Frozen features of uint8 [N, h, w] sources: ``{"cls": [N, C], "mean": [N, C]}`` (float32,
    CPU), from the final-norm tokens; the encoder's train/eval mode is restored afterwards."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out: dict[str, list[torch.Tensor]] = {p: [] for p in POOLS}
    try:
        for chunk in images.split(batch_size):
            x = normalize(resize(chunk, img_size), pixel_mean, pixel_std).to(device)
            tokens = encoder.forward_features(x).float()
            out["cls"].append(tokens[:, 0].cpu())
            out["mean"].append(tokens[:, 1:].mean(dim=1).cpu())
    finally:
        encoder.train(was_training)
    return {p: torch.cat(v) for p, v in out.items()}


def knn_classify(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, *,
                 k: int = 20, temperature: float = 0.07, num_classes: int = 10,
                 chunk: int = 1000) -> torch.Tensor:
    """Weighted k-NN labels of ``queries`` [M, C] among ``bank`` [N, C] -> [M] (cosine)."""
    bank = F.normalize(bank, dim=1)
    preds = []
    for q in F.normalize(queries, dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(min(k, len(bank)), dim=1)
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(encoder: PretrainViT, *, train_images: torch.Tensor, train_labels: torch.Tensor,
                 test_images: torch.Tensor, test_labels: torch.Tensor, img_size: int,
                 pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...], pool: str = "cls",
                 k: int = 20, temperature: float = 0.07, batch_size: int = 250) -> float:
    """Top-1 of weighted k-NN on ``encoder``'s frozen ``pool`` features (a fraction in [0, 1])."""
    kw = {"img_size": img_size, "pixel_mean": pixel_mean, "pixel_std": pixel_std,
          "batch_size": batch_size}
    bank = extract_features(encoder, train_images, **kw)[pool]
    queries = extract_features(encoder, test_images, **kw)[pool]
    pred = knn_classify(bank, train_labels, queries, k=k, temperature=temperature)
    return float((pred == test_labels).float().mean())


def linear_probe_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor,
                          test_feats: torch.Tensor, test_labels: torch.Tensor, *,
                          epochs: int = 30, lr: float = 1e-2, batch_size: int = 256,
                          num_classes: int = 10, seed: int = 0) -> float:
    """Top-1 of a linear classifier trained on standardised frozen features (AdamW, cosine)."""
    mean, std = train_feats.mean(dim=0), train_feats.std(dim=0) + 1e-6
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(xtr.shape[1], num_classes)
        steps = epochs * max(1, len(xtr) // batch_size)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        for _ in range(epochs):
            order = torch.randperm(len(xtr))
            for b in range(max(1, len(xtr) // batch_size)):
                idx = order[b * batch_size:(b + 1) * batch_size]
                loss = F.cross_entropy(head(xtr[idx]), train_labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        return float((head(xte).argmax(dim=1) == test_labels).float().mean())


@torch.no_grad()
def classifier_top1(model: PretrainViT, images: torch.Tensor, labels: torch.Tensor, *,
                    img_size: int, pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...],
                    batch_size: int = 250) -> float:
    """Top-1 of a classifier ViT's own head (supervised pre-training) on un-augmented images."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        logits = model(normalize(resize(x, img_size), pixel_mean, pixel_std).to(device))
        correct += int((logits.argmax(dim=1).cpu() == y).sum())
    model.train(was_training)
    return correct / len(labels)


def evaluate_encoder(encoder: PretrainViT, cfg: PretrainConfig,
                     data: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """k-NN and linear-probe top-1 for both pools: ``{"knn_cls": .., "probe_mean": .., ..}``."""
    e = cfg.eval
    data = data or eval_data(cfg)
    kw = {"img_size": cfg.encoder.vit().pretrain_img_size, "pixel_mean": cfg.data.pixel_mean,
          "pixel_std": cfg.data.pixel_std, "batch_size": e.batch_size}
    bank = extract_features(encoder, data["train_images"], **kw)
    query = extract_features(encoder, data["test_images"], **kw)
    out: dict[str, float] = {}
    for pool in POOLS:
        pred = knn_classify(bank[pool], data["train_labels"], query[pool], k=e.knn_k,
                            temperature=e.knn_temperature)
        out[f"knn_{pool}"] = float((pred == data["test_labels"]).float().mean())
        out[f"probe_{pool}"] = linear_probe_accuracy(
            bank[pool], data["train_labels"], query[pool], data["test_labels"],
            epochs=e.probe_epochs, lr=e.probe_lr)
    return out


def eval_data(cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """The first ``bank_images`` train images and first ``test_images`` test images."""
    tr, trl = load_eval_images("train", cfg.eval.bank_images, cfg.data.root)
    te, tel = load_eval_images("test", cfg.eval.test_images, cfg.data.root)
    return {"train_images": tr, "train_labels": trl, "test_images": te, "test_labels": tel}


def evaluate_method(method: PretrainMethod, cfg: PretrainConfig, *, random_baseline: bool = True
                    ) -> dict[str, Any]:
    """Frozen-feature scores of ``method``'s encoder (plus the supervised head's top-1), and of
    the same architecture freshly initialised by the same recipe (seeded) for reference."""
    data = eval_data(cfg)
    result: dict[str, Any] = {"trained": evaluate_encoder(method.encoder(), cfg, data),
                              "bank_images": len(data["train_images"]),
                              "test_images": len(data["test_images"])}
    if cfg.method.value == "supervised":  # the classifier's own head, on the whole test split
        test, test_labels = load_eval_images("test", None, cfg.data.root)
        test_labels = pretrain_labels(test_labels, cfg.supervised.labels)  # the head's classes
        result["trained"]["classifier_top1_test10k"] = classifier_top1(
            method.encoder(), test, test_labels, img_size=method.img_size,
            pixel_mean=cfg.data.pixel_mean, pixel_std=cfg.data.pixel_std,
            batch_size=cfg.eval.batch_size)
    if random_baseline:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            fresh = build_method(cfg)
        device = next(method.encoder().parameters()).device
        result["random_init"] = evaluate_encoder(fresh.encoder().to(device), cfg, data)
    return result


def load_pretrained(path: str | Path, cfg: PretrainConfig | None = None) -> PretrainMethod:
    """A method with the weights of one of our checkpoints (its config is read from the file
    unless given); missing or unexpected keys are errors."""
    obj = read_checkpoint_file(path)  # names the file and what is wrong with it
    if not isinstance(obj, dict) or "config" not in obj:
        raise CheckpointError(f"{path}: not one of our pre-training checkpoints (no 'config' "
                              f"key); pass a <out>/checkpoint-*.pth or last.pth of `pretrain`")
    if cfg is None:
        cfg = from_dict(PretrainConfig, obj["config"], where=f"{path}: config")
    method = build_method(cfg)
    method.load_official_state(obj[method.checkpoint_key])
    return method


@torch.no_grad()
def mae_reconstruction_figure(net: MAENet, images: torch.Tensor, path: str | Path, *,
                              pixel_mean: tuple[float, ...], pixel_std: tuple[float, ...],
                              seed: int = 0, title: str = "") -> Path:
    """Save a PNG with rows original / masked / reconstruction (visible patches pasted back).

    With ``norm_pix_loss`` the decoder predicts each patch normalised by its own mean and std;
    the figure re-applies the original patch's statistics (it cannot be predicted otherwise).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .methods.mae import patchify

    net = copy.deepcopy(net).cpu().eval()
    x = normalize(resize(images, net.grid * net.patch_size), pixel_mean, pixel_std)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, pred, mask = net(x)
    p = net.patch_size
    target = patchify(x, p)
    if net.norm_pix_loss:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    m = mask[..., None]
    masked = unpatchify(target * (1 - m), p)
    recon = unpatchify(target * (1 - m) + pred * m, p)
    std = torch.tensor(pixel_std).view(1, 3, 1, 1)
    mu = torch.tensor(pixel_mean).view(1, 3, 1, 1)

    def show(t: torch.Tensor) -> torch.Tensor:  # normalised [B, 3, H, W] -> grey [B, H, W]
        return (t * std + mu).mean(dim=1).clamp(0, 1)

    rows = [("original", show(x)), ("masked", show(masked)), ("reconstruction", show(recon))]
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.9), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
