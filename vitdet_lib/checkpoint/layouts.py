"""Readers for the official ViT checkpoint layouts and our own, into one neutral form.

Each reader maps a checkpoint's keys onto our parameter names (``patch_embed.proj.*``,
``blocks.N.*``), sets the position information aside untouched (the stored tensors, never
regenerated: MAE and MoCo v3 lay out their fixed sin-cos embeddings differently), and gives a
reason for every key it drops. Keys it does not recognise are collected, not guessed at;
the loader refuses them.

Layouts (the key names and shapes of the released ViT-B/16 files):

- ``timm``: MAE (``{"model"}``; ``cls_token``, sin-cos ``pos_embed`` [1, 1+N, C], maybe
  ``decoder_*``/``mask_token``), DeiT (``head.*``, maybe ``dist_token``/``head_dist.*``),
  MoCo v3 after its own ``convert_to_deit.py``.
- ``mocov3``: ``{"state_dict"}`` with ``module.base_encoder.`` (plus momentum encoder and
  predictor, and a projection MLP as the base encoder's ``head.*``).
- ``beit``: ``q_bias``/``v_bias``, ``gamma_1/2``, a shared ``rel_pos_bias`` table
  [(2r-1)^2 + 3, heads] or per-block ``attn.relative_position_bias_table``, no abs embeddings.
- ``vitdet``: ours, a detector (``backbone.vit.``) or a bare backbone (``convert`` output).
"""
from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .report import CheckpointError


class CheckpointLayout(str, enum.Enum):
    TIMM = "timm"
    MOCOV3 = "mocov3"
    BEIT = "beit"
    VITDET = "vitdet"


@dataclass
class RelTable:
    """A relative-position table as found in a checkpoint, class-token rows already removed.

    Attributes:
        table: [(2r-1)^2, heads].
        source: checkpoint key.
        stored_shape: shape in the checkpoint (with any class-token rows).
        how: what was done to it so far (e.g. "3 class-token rows removed"), or "".
    """

    table: torch.Tensor
    source: str
    stored_shape: list[int]
    how: str = ""


@dataclass
class SourceViT:
    """A checkpoint read into our names, position information set aside.

    Attributes:
        layout: the layout it was read as.
        tensors: our key -> tensor, for ``patch_embed.proj.*`` and ``blocks.N.*``.
        origins: our key -> checkpoint key(s) it came from (with any conversion).
        dropped: checkpoint key -> why it is not used.
        unknown: checkpoint keys no rule accounts for.
        abs_pos: stored absolute embeddings, [1, P+N, C] (official) or [1, H, W, C] (ours).
        abs_pos_key: its checkpoint key.
        num_prefix_tokens: class/distillation slots at the front of a 3-D ``abs_pos``.
        rel_shared: one table for every block (BEiT's shared ``rel_pos_bias``).
        rel_per_block: block index -> its own table (BEiT without a shared table).
        rel_by_kind: "window" / "global" -> table (ours).
    """

    layout: CheckpointLayout
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    abs_pos: torch.Tensor | None = None
    abs_pos_key: str | None = None
    num_prefix_tokens: int = 0
    rel_shared: RelTable | None = None
    rel_per_block: dict[int, RelTable] = field(default_factory=dict)
    rel_by_kind: dict[str, RelTable] = field(default_factory=dict)

    def take(self, ours: str, tensor: torch.Tensor, origin: str) -> None:
        self.tensors[ours] = tensor
        self.origins[ours] = origin

    @property
    def num_blocks(self) -> int:
        idx = {int(m.group(1)) for k in self.tensors if (m := _BLOCK.match(k))}
        return max(idx) + 1 if idx else 0


# parameter names inside one block, identical in timm, MAE, MoCo v3, DeiT, BEiT and ours
_BLOCK_PARAMS = frozenset({
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
    "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.fc2.weight", "mlp.fc2.bias", "gamma_1", "gamma_2",
})
# newer timm names layer scale ``ls1.gamma``; BEiT (and we) call it ``gamma_1``
_BLOCK_RENAMES = {"ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_PATCH_EMBED = ("patch_embed.proj.weight", "patch_embed.proj.bias")

_FINAL_NORM = ("final encoder norm: the detection backbone has none "
               "(each tapped block feeds the adapter)")
_CLS = "class token: the detection backbone has none"
# top-level keys of timm-style encoders that detection does not use: (exact key or prefix, reason)
_TIMM_DROPS: tuple[tuple[str, str], ...] = (
    ("cls_token", _CLS),
    ("dist_token", "DeiT distillation token: the detection backbone has none"),
    ("norm.", _FINAL_NORM),
    ("fc_norm.", "norm before the classifier (global-pool fine-tuned models)"),
    ("head_dist.", "DeiT distillation classifier"),
    ("head.", "classification head of the pre-training (or fine-tuned) classifier"),
    ("pre_logits.", "representation layer before the classifier"),
    ("mask_token", "mask token: pre-training only"),
    ("decoder_", "MAE decoder: pre-training only"),
)
_BEIT_DROPS: tuple[tuple[str, str], ...] = (
    ("cls_token", _CLS),
    ("mask_token", "BEiT mask token: pre-training only"),
    ("lm_head.", "BEiT masked-image-modeling head (predicts tokenizer codes): pre-training only"),
    ("norm.", _FINAL_NORM),
    ("fc_norm.", "norm before the classifier (fine-tuned BEiT)"),
    ("head.", "classification head (fine-tuned BEiT)"),
)
_INDEX_BUFFER = ("relative-position index buffer: a derived constant "
                 "(our bias is built from offsets directly)")
_MOCO_DROPS: tuple[tuple[str, str], ...] = (
    ("momentum_encoder.", ("MoCo v3 momentum encoder: an EMA copy; the base encoder is the one "
                           "transferred (as MoCo v3's own conversion does)")),
    ("predictor.", "MoCo v3 predictor MLP: pre-training only"),
    ("base_encoder.head.", "MoCo v3 projection MLP: pre-training only"),
)


def _drop_reason(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    for name, reason in rules:
        if key == name or (name.endswith((".", "_")) and key.startswith(name)):
            return reason
    return None


def unwrap_state(obj: Any) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a loaded checkpoint and the wrapper key it sat under ("" if bare).

    MoCo v3 wraps its weights in ``state_dict``, MAE/DeiT/BEiT and our engine in ``model``
    (beside optimizer state and the like, which is ignored).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a mapping, got {type(obj).__name__}")
    for wrapper in ("state_dict", "model", "module"):
        inner = obj.get(wrapper)
        if (isinstance(inner, Mapping) and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())):
            return dict(inner), wrapper
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), ""
    raise CheckpointError("no state dict found in the checkpoint "
                          f"(top-level keys: {sorted(obj)[:10]})")


def _ddp_prefix(state: Mapping[str, torch.Tensor]) -> str:
    """DistributedDataParallel's ``module.`` when every key carries it, else ""."""
    return "module." if state and all(k.startswith("module.") for k in state) else ""


def detect_layout(state: Mapping[str, torch.Tensor]) -> CheckpointLayout:
    """Which layout a state dict is in, from its key names alone.

    Every official layout has a class token and ours never has one, which tells a bare backbone
    of ours from a timm-style encoder.

    Raises:
        CheckpointError: no patch embedding or no blocks anywhere (not a ViT).
    """
    keys = list(state)
    if any(k.startswith(("module.base_encoder.", "base_encoder.")) for k in keys):
        return CheckpointLayout.MOCOV3
    keys = [k.removeprefix("module.") for k in keys]
    if any(k.startswith("backbone.vit.") for k in keys) or \
            {"rel_pos_window_table", "rel_pos_global_table"} & set(keys):
        return CheckpointLayout.VITDET
    if "patch_embed.proj.weight" not in keys or not any(_BLOCK.match(k) for k in keys):
        shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
        raise CheckpointError(
            f"the checkpoint is not a ViT: it has no patch_embed.proj.weight and blocks.N.* keys "
            f"(under any known prefix); its keys start: {shown}")
    if any(k.endswith(("attn.q_bias", "relative_position_bias_table")) or
           k.startswith(("rel_pos_bias.", "lm_head.")) for k in keys):
        return CheckpointLayout.BEIT
    return CheckpointLayout.TIMM if "cls_token" in keys else CheckpointLayout.VITDET


def read_state(state: Mapping[str, torch.Tensor],
               layout: CheckpointLayout | None = None) -> SourceViT:
    """Read a state dict in ``layout`` (detected when None) into a :class:`SourceViT`."""
    layout = CheckpointLayout(layout) if layout is not None else detect_layout(state)
    reader = {CheckpointLayout.TIMM: _read_timm, CheckpointLayout.MOCOV3: _read_mocov3,
              CheckpointLayout.BEIT: _read_beit, CheckpointLayout.VITDET: _read_vitdet}[layout]
    # half-precision files (the fp16 exports a study ships) are read, resized and loaded in fp32
    return reader({k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
                   for k, v in state.items()})


def _read_block_or_patch(src: SourceViT, key: str, full_key: str, tensor: torch.Tensor) -> bool:
    """Take ``key`` if it is a patch-embedding or plain block parameter; False otherwise."""
    if key in _PATCH_EMBED:
        src.take(key, tensor, full_key)
        return True
    m = _BLOCK.match(key)
    if m is None:
        return False
    rest = _BLOCK_RENAMES.get(m.group(2), m.group(2))
    if rest not in _BLOCK_PARAMS:
        return False
    src.take(f"blocks.{m.group(1)}.{rest}", tensor, full_key)
    return True


def _read_timm_into(src: SourceViT, state: dict[str, torch.Tensor], prefix: str,
                    drops: tuple[tuple[str, str], ...]) -> None:
    """Shared by the timm and MoCo v3 readers: ``prefix`` is what precedes timm's names."""
    for full_key, tensor in state.items():
        key = full_key[len(prefix):]
        if _read_block_or_patch(src, key, full_key, tensor):
            continue
        if key == "pos_embed":
            src.abs_pos, src.abs_pos_key = tensor, full_key
        elif (reason := _drop_reason(key, drops)) is not None:
            src.dropped[full_key] = reason
        else:
            src.unknown.append(full_key)
    # the stored embedding has one slot per prefix token (class, distillation) before the grid
    src.num_prefix_tokens = sum(f"{prefix}{t}" in state for t in ("cls_token", "dist_token"))


def _read_timm(state: dict[str, torch.Tensor]) -> SourceViT:
    src = SourceViT(CheckpointLayout.TIMM)
    _read_timm_into(src, state, _ddp_prefix(state), _TIMM_DROPS)
    return src


def _read_mocov3(state: dict[str, torch.Tensor]) -> SourceViT:
    src = SourceViT(CheckpointLayout.MOCOV3)
    ddp = _ddp_prefix(state)
    encoder = f"{ddp}base_encoder."
    rest: dict[str, torch.Tensor] = {}
    for full_key, tensor in state.items():
        reason = _drop_reason(full_key[len(ddp):], _MOCO_DROPS)
        if reason is not None:
            src.dropped[full_key] = reason
        elif full_key.startswith(encoder):
            rest[full_key] = tensor
        else:
            src.unknown.append(full_key)
    _read_timm_into(src, rest, encoder, _TIMM_DROPS)
    return src


def _strip_cls_rows(table: torch.Tensor, key: str) -> RelTable:
    """BEiT's table holds (2r-1)^2 offset rows then 3 class-token rows (cls->token,
    token->cls, cls->cls); the detection backbone has no class token, so those go."""
    rows = table.shape[0]
    side = math.isqrt(rows - 3) if rows > 3 else 0
    if side * side == rows - 3:
        return RelTable(table[: rows - 3], key, list(table.shape), "3 class-token rows removed")
    if math.isqrt(rows) ** 2 == rows:
        return RelTable(table, key, list(table.shape))
    raise CheckpointError(f"{key}: a relative-position table of {rows} rows is neither "
                          f"(2r-1)^2 nor (2r-1)^2 + 3")


def _read_beit(state: dict[str, torch.Tensor]) -> SourceViT:
    src = SourceViT(CheckpointLayout.BEIT)
    ddp = _ddp_prefix(state)
    q_bias: dict[int, str] = {}  # block index -> checkpoint key
    v_bias: dict[int, str] = {}
    for full_key, tensor in state.items():
        key = full_key[len(ddp):]
        m = _BLOCK.match(key)
        if _read_block_or_patch(src, key, full_key, tensor):
            continue
        if key.endswith("relative_position_index"):
            src.dropped[full_key] = _INDEX_BUFFER
        elif key == "rel_pos_bias.relative_position_bias_table":
            src.rel_shared = _strip_cls_rows(tensor, full_key)
        elif m and m.group(2) == "attn.relative_position_bias_table":
            src.rel_per_block[int(m.group(1))] = _strip_cls_rows(tensor, full_key)
        elif m and m.group(2) == "attn.q_bias":
            q_bias[int(m.group(1))] = full_key
        elif m and m.group(2) == "attn.v_bias":
            v_bias[int(m.group(1))] = full_key
        elif key == "pos_embed":  # BEiT variants with absolute embeddings
            src.abs_pos, src.abs_pos_key = tensor, full_key
        elif (reason := _drop_reason(key, _BEIT_DROPS)) is not None:
            src.dropped[full_key] = reason
        else:
            src.unknown.append(full_key)
    # BEiT learns biases for q and v only (k's would cancel in the softmax); one qkv bias with
    # zeros for k computes the same attention
    for i in sorted(set(q_bias) | set(v_bias)):
        if i not in q_bias or i not in v_bias:
            src.unknown.append(q_bias.get(i) or v_bias[i])
            continue
        q, v = state[q_bias[i]], state[v_bias[i]]
        src.take(f"blocks.{i}.attn.qkv.bias", torch.cat([q, torch.zeros_like(q), v]),
                 f"cat({q_bias[i]}, zeros, {v_bias[i]})")
    src.num_prefix_tokens = int(f"{ddp}cls_token" in state)
    return src


def _read_vitdet(state: dict[str, torch.Tensor]) -> SourceViT:
    src = SourceViT(CheckpointLayout.VITDET)
    ddp = _ddp_prefix(state)
    in_detector = any(k.startswith(f"{ddp}backbone.vit.") for k in state)
    prefix = f"{ddp}backbone.vit." if in_detector else ddp
    for full_key, tensor in state.items():
        if in_detector and not full_key.startswith(prefix):
            src.dropped[full_key] = ("detector part outside the ViT (adapter, FPN, heads): only "
                                     "the backbone is initialised")
            continue
        key = full_key[len(prefix):]
        if _read_block_or_patch(src, key, full_key, tensor):
            continue
        if key == "pos_embed":
            src.abs_pos, src.abs_pos_key = tensor, full_key
        elif key in ("rel_pos_window_table", "rel_pos_global_table"):
            kind = key.split("_")[2]  # "window" | "global"
            src.rel_by_kind[kind] = RelTable(tensor, full_key, list(tensor.shape))
        else:
            src.unknown.append(full_key)
    return src
