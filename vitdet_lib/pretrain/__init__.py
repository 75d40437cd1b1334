"""Small-scale pre-training of the detection ViT on Fashion-MNIST: supervised (DeiT), MoCo v3,
BEiT and MAE, each saving its checkpoint in the method's official layout so the converters in
``vitdet_lib.checkpoint`` load it exactly as they load the released files.

    cfg = load_pretrain_config("params/pretrain_mae.yaml", ["train.epochs=2"])
    pretrain(cfg, "work_dirs/pretrain/mae")            # or: vitdet-bench pretrain --method mae
    method = load_pretrained("work_dirs/pretrain/mae/checkpoint-2.pth")
    evaluate_method(method, method.cfg)                  # k-NN / linear probe vs random init

Modules: ``config`` (params schema), ``encoder`` (timm-named ViT, sin-cos tables, BEiT's
relative bias), ``augment``, ``masking``, ``tokenizer`` (BEiT's dVAE), ``methods/`` (one file
per recipe), ``data`` (images and per-rank batches), ``engine`` (the loop), ``evaluate``,
``commands`` (CLI).
"""
from .config import Method, PretrainConfig, load_pretrain_config
from .encoder import PosEmbedKind, PretrainViT, sincos_2d_pos_embed
from .engine import Pretrainer, epoch_checkpoint_name, pretrain
from .evaluate import (
                       evaluate_encoder,
                       evaluate_method,
                       extract_features,
                       knn_accuracy,
                       linear_probe_accuracy,
                       load_pretrained,
                       mae_reconstruction_figure,
)
from .methods import METHODS, PretrainMethod, build_method

__all__ = [
    "METHODS", "Method", "PosEmbedKind", "PretrainConfig", "PretrainMethod", "PretrainViT",
    "Pretrainer", "build_method", "epoch_checkpoint_name", "evaluate_encoder", "evaluate_method",
    "extract_features", "knn_accuracy", "linear_probe_accuracy", "load_pretrain_config",
    "load_pretrained", "mae_reconstruction_figure", "pretrain",
    "sincos_2d_pos_embed",
]
