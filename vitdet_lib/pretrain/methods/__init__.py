"""The four pre-training recipes behind one interface (:class:`PretrainMethod`)."""
from __future__ import annotations

from ..config import Method, PretrainConfig
from .base import Batch, PretrainMethod
from .beit import BEiT, BEiTNet
from .mae import MAE, MAENet, patchify, unpatchify
from .mocov3 import MoCoV3, MoCoV3Net, build_mlp
from .supervised import Supervised, build_supervised_vit

METHODS: dict[Method, type[PretrainMethod]] = {
    Method.SUPERVISED: Supervised,
    Method.MOCOV3: MoCoV3,
    Method.BEIT: BEiT,
    Method.MAE: MAE,
}


def build_method(cfg: PretrainConfig) -> PretrainMethod:
    """The recipe named by ``cfg.method``, freshly initialised (seed the RNG first)."""
    return METHODS[cfg.method](cfg)


__all__ = [
    "MAE",
    "METHODS",
    "BEiT",
    "BEiTNet",
    "Batch",
    "MAENet",
    "MoCoV3",
    "MoCoV3Net",
    "PretrainMethod",
    "Supervised",
    "build_method",
    "build_mlp",
    "build_supervised_vit",
    "patchify",
    "unpatchify",
]
