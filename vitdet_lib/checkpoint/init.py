"""How the detection backbone is initialised: which pre-training, which file, and the paper's
positional treatments (docs/paper.md, Table 4).

``InitConfig`` is plain data so an experiment can carry it in its params file; resolving the
per-init defaults and checking them against the model config happens in
:func:`resolve_pos_init`, before any file is read, so a bad combination fails at config time.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..config import ConfigError, RelPos, ViTConfig


class InitKind(str, enum.Enum):
    """The paper's five backbone initialisations, plus our own fine-tuned detectors."""

    RANDOM = "random"  # BEiT-style random init of the ViT (no checkpoint)
    SUPERVISED = "supervised"  # DeiT / timm supervised ImageNet classifier
    MOCOV3 = "mocov3"  # MoCo v3 (official layout, or after MoCo v3's own convert_to_deit)
    BEIT = "beit"  # BEiT masked image modeling
    MAE = "mae"  # MAE masked autoencoder
    DETECTOR = "detector"  # one of our detector checkpoints (or a `convert` output)


class RelPosInit(str, enum.Enum):
    """Initial relative-position tables (Table 4 rows)."""

    PRETRAINED = "pretrained"  # the checkpoint's tables, resized to each attention kind
    ZERO = "zero"  # zeros: the bias starts as a no-op
    RANDOM = "random"  # truncated normal, std 0.02 (BEiT's init of these tables)
    NONE = "none"  # no relative position bias (needs ``rel_pos: none`` in the model)


class AbsPosInit(str, enum.Enum):
    """Initial absolute position embeddings (Table 4 columns)."""

    PRETRAINED = "pretrained"  # the checkpoint's stored embeddings, resized to the detection grid
    RANDOM = "random"  # truncated normal, std 0.02
    NONE = "none"  # no absolute embeddings (needs ``use_abs_pos: false`` in the model)


# docs/paper.md, "Positional information": BEiT transfers its relative biases and has no absolute
# embeddings; every other pre-training transfers absolute embeddings and starts relative biases
# at zero. Random init has nothing to transfer. A detector checkpoint already carries both at
# our layout, so fine-tuning from it keeps both.
DEFAULT_POS_INIT: dict[InitKind, tuple[RelPosInit, AbsPosInit]] = {
    InitKind.RANDOM: (RelPosInit.ZERO, AbsPosInit.RANDOM),
    InitKind.SUPERVISED: (RelPosInit.ZERO, AbsPosInit.PRETRAINED),
    InitKind.MOCOV3: (RelPosInit.ZERO, AbsPosInit.PRETRAINED),
    InitKind.BEIT: (RelPosInit.PRETRAINED, AbsPosInit.RANDOM),
    InitKind.MAE: (RelPosInit.ZERO, AbsPosInit.PRETRAINED),
    InitKind.DETECTOR: (RelPosInit.PRETRAINED, AbsPosInit.PRETRAINED),
}


@dataclass
class InitConfig:
    """Backbone initialisation of one fine-tuning run.

    Args:
        kind: which pre-training the weights come from (sets the checkpoint layout and the
            default positional treatments).
        checkpoint: path of the checkpoint file; required for every kind but ``random``.
        rel_pos_init: relative-position tables; None = the paper's default for ``kind``.
        abs_pos_init: absolute position embeddings; None = the paper's default for ``kind``.
    """

    kind: InitKind = InitKind.RANDOM
    checkpoint: str | None = None
    rel_pos_init: RelPosInit | None = None
    abs_pos_init: AbsPosInit | None = None


def resolve_pos_init(init: InitConfig, vit: ViTConfig) -> tuple[RelPosInit, AbsPosInit]:
    """The positional treatments ``init`` asks for, checked against the model config.

    An unset treatment takes the per-kind default, except that a model without relative biases
    (``rel_pos: none``) or without absolute embeddings (``use_abs_pos: false``) makes the
    default ``none``: the model config already says so, and the checkpoint's tables are then
    reported as dropped. An explicit treatment must agree with the model config.

    Raises:
        ConfigError: checkpoint presence does not fit ``kind``, a treatment disagrees with the
            model config, or ``pretrained`` is asked of a random init.
    """
    kind = InitKind(init.kind)
    if kind == InitKind.RANDOM and init.checkpoint:
        raise ConfigError("init.kind=random takes no checkpoint, "
                          f"got checkpoint={init.checkpoint!r}")
    if kind != InitKind.RANDOM and not init.checkpoint:
        raise ConfigError(f"init.kind={kind.value} needs init.checkpoint (a file path)")

    has_rel = vit.rel_pos != RelPos.NONE
    default_rel, default_abs = DEFAULT_POS_INIT[kind]
    rel = RelPosInit(init.rel_pos_init) if init.rel_pos_init is not None else (
        default_rel if has_rel else RelPosInit.NONE)
    abs_ = AbsPosInit(init.abs_pos_init) if init.abs_pos_init is not None else (
        default_abs if vit.use_abs_pos else AbsPosInit.NONE)

    if (rel == RelPosInit.NONE) == has_rel:
        raise ConfigError(
            f"init.rel_pos_init={rel.value} disagrees with model.backbone.rel_pos="
            f"{RelPos(vit.rel_pos).value}: use rel_pos_init=none together with rel_pos=none")
    if (abs_ == AbsPosInit.NONE) == vit.use_abs_pos:
        raise ConfigError(
            f"init.abs_pos_init={abs_.value} disagrees with model.backbone.use_abs_pos="
            f"{vit.use_abs_pos}: use abs_pos_init=none together with use_abs_pos=false")
    if kind == InitKind.RANDOM and (rel == RelPosInit.PRETRAINED or abs_ == AbsPosInit.PRETRAINED):
        raise ConfigError("init.kind=random has no checkpoint to take pretrained position "
                          "information from; use zero/random/none")
    return rel, abs_
