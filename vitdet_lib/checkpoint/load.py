"""Initialise the detection ViT from a checkpoint: read, check, convert, resize, load strictly.

Strict means every model parameter is either loaded from the checkpoint or declared new by the
positional treatment (Table 4) — and every checkpoint key is either loaded or dropped for a
stated reason. Anything else is an error naming the keys, never a silent skip.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..model.pos import rel_table_side, resize_abs_pos, resize_rel_table
from ..model.vit import ViT
from .init import AbsPosInit, InitConfig, InitKind, RelPosInit, resolve_pos_init
from .layouts import CheckpointLayout, RelTable, SourceViT, detect_layout, read_state, unwrap_state
from .read import read_checkpoint_file
from .report import CheckpointError, LoadReport, ShapeChange

# which layouts each init kind may come in; MoCo v3 also ships through its own convert_to_deit.py
KIND_LAYOUTS: dict[InitKind, tuple[CheckpointLayout, ...]] = {
    InitKind.SUPERVISED: (CheckpointLayout.TIMM,),
    InitKind.MAE: (CheckpointLayout.TIMM,),
    InitKind.MOCOV3: (CheckpointLayout.MOCOV3, CheckpointLayout.TIMM),
    InitKind.BEIT: (CheckpointLayout.BEIT,),
    InitKind.DETECTOR: (CheckpointLayout.VITDET,),
}
_REL_KEYS = {"window": "rel_pos_window_table", "global": "rel_pos_global_table"}
_RANDOM_STD = 0.02  # the truncated-normal std ViT.init_weights uses for position information


def read_source(obj: Any, kind: InitKind) -> SourceViT:
    """The weights in a loaded checkpoint, read in the layout they are in, which must be one
    ``kind`` comes in."""
    state, _ = unwrap_state(obj)
    layout = detect_layout(state)
    allowed = KIND_LAYOUTS[kind]
    if layout not in allowed:
        raise CheckpointError(
            f"the checkpoint is in the {layout.value!r} layout, but init.kind={kind.value} "
            f"comes in {[a.value for a in allowed]}: is it the right file for this init?")
    return read_state(state, layout)


def initialize_backbone(vit: ViT, init: InitConfig, *, checkpoint: Mapping[str, Any] | None = None
                        ) -> LoadReport:
    """Initialise ``vit`` as ``init`` says and report what went where.

    Args:
        vit: the detection backbone (``detector.backbone.vit``), freshly built.
        init: kind, checkpoint path and positional treatments.
        checkpoint: an already loaded checkpoint object, used instead of reading
            ``init.checkpoint`` (which may then be None).
    Returns:
        The :class:`LoadReport`.
    Raises:
        ConfigError: the positional treatments disagree with the model config.
        CheckpointError: not a ViT, a dimension disagrees with the config, or keys are
            missing / unaccounted for.
    """
    kind = InitKind(init.kind)
    if checkpoint is not None and kind != InitKind.RANDOM and not init.checkpoint:
        init = dataclasses.replace(init, checkpoint="<in memory>")
    try:
        return _initialize(vit, init, kind, checkpoint)
    except CheckpointError as err:
        where = str(init.checkpoint)
        if kind == InitKind.RANDOM or str(err).startswith(where):
            raise
        # the messages below say what does not fit; the user also needs to know which file
        raise CheckpointError(f"{where} (init.kind={kind.value}): {err}") from err


def _initialize(vit: ViT, init: InitConfig, kind: InitKind,
                checkpoint: Mapping[str, Any] | None) -> LoadReport:
    rel_init, abs_init = resolve_pos_init(init, vit.cfg)
    report = LoadReport(kind=kind.value, checkpoint=init.checkpoint, layout="none",
                        rel_pos_init=rel_init.value, abs_pos_init=abs_init.value)
    model_state = vit.state_dict()
    new_state: dict[str, torch.Tensor] = {}

    if kind == InitKind.RANDOM:
        for key in model_state:
            if key != "pos_embed" and key not in _REL_KEYS.values():
                new_state[key] = model_state[key]
                report.missing[key] = "random init (BEiT-style, init.kind=random)"
        src = SourceViT(CheckpointLayout.VITDET)  # nothing to transfer
    else:
        obj = checkpoint if checkpoint is not None else read_checkpoint_file(init.checkpoint)
        src = read_source(obj, kind)
        report.layout = src.layout.value
        _check_is_vit(src)
        _check_compatible(src, vit)
        if src.unknown:
            raise CheckpointError(
                f"{len(src.unknown)} checkpoint key(s) no {src.layout.value} rule accounts for "
                f"(neither loaded nor dropped for a known reason): {src.unknown[:20]}")
        for key, tensor in src.tensors.items():
            if key not in model_state:
                raise CheckpointError(f"checkpoint key {src.origins[key]} maps to {key}, which the "
                                      f"model does not have")
            new_state[key] = tensor
            report.loaded[key] = src.origins[key]
        report.dropped.update(src.dropped)

    _init_abs_pos(src, abs_init, model_state, new_state, report)
    _init_rel_pos(vit, src, rel_init, model_state, new_state, report)

    lacking = [k for k in model_state if k not in new_state]
    if lacking:
        raise CheckpointError(f"the checkpoint lacks {len(lacking)} model key(s) that no "
                              f"treatment initialises: {lacking[:20]}")
    for key, tensor in new_state.items():
        if tensor.shape != model_state[key].shape:
            raise CheckpointError(f"{key}: checkpoint shape {list(tensor.shape)} != model shape "
                                  f"{list(model_state[key].shape)} "
                                  f"(from {report.loaded.get(key, key)})")
    vit.load_state_dict(new_state, strict=True)
    return report


def _check_is_vit(src: SourceViT) -> None:
    if "patch_embed.proj.weight" not in src.tensors or src.num_blocks == 0:
        raise CheckpointError(f"the checkpoint ({src.layout.value} layout) is not a ViT: no "
                              f"patch_embed.proj.weight or no blocks.N.* parameters")


def _check_compatible(src: SourceViT, vit: ViT) -> None:
    """Compare every dimension the checkpoint reveals with the config; list all mismatches."""
    cfg = vit.cfg
    w = src.tensors["patch_embed.proj.weight"]  # [C, in_chans, p, p]
    found: list[tuple[str, object, object]] = [
        ("width (embed_dim)", w.shape[0], cfg.embed_dim),
        ("patch size (patch_size)", tuple(w.shape[2:]), (cfg.patch_size, cfg.patch_size)),
        ("input channels", w.shape[1], 3),
        ("depth (number of blocks)", src.num_blocks, cfg.depth),
    ]
    fc1 = src.tensors.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        found.append(("MLP hidden width (embed_dim * mlp_ratio)", fc1.shape[0],
                      int(cfg.embed_dim * cfg.mlp_ratio)))
    tables = [src.rel_shared, *src.rel_per_block.values(), *src.rel_by_kind.values()]
    heads = {t.table.shape[1] for t in tables if t is not None}
    if heads:  # only relative-position tables reveal the head count
        found.append(("attention heads (num_heads)",
                      next(iter(heads)) if len(heads) == 1 else sorted(heads), cfg.num_heads))
    has_gamma = any(k.endswith(".gamma_1") for k in src.tensors)
    found.append(("layer scale (gamma_1/gamma_2; layer_scale_init > 0)", has_gamma,
                  cfg.layer_scale_init > 0))
    has_bias = any(k.endswith(".attn.qkv.bias") for k in src.tensors)
    found.append(("qkv bias (qkv_bias)", has_bias, cfg.qkv_bias))
    bad = [f"{name}: checkpoint {got}, config {want}" for name, got, want in found if got != want]
    if bad:
        raise CheckpointError("the checkpoint does not fit the model config: " + "; ".join(bad))


def _random_like(t: torch.Tensor) -> torch.Tensor:
    return nn.init.trunc_normal_(torch.empty_like(t), std=_RANDOM_STD)


def _init_abs_pos(src: SourceViT, how: AbsPosInit, model_state: dict[str, torch.Tensor],
                  new_state: dict[str, torch.Tensor], report: LoadReport) -> None:
    """Fill ``pos_embed`` [1, G, G, C] as ``how`` says; a stored embedding not used is dropped."""
    if src.abs_pos is not None and how != AbsPosInit.PRETRAINED:
        reason = ("model has no absolute embeddings" if how == AbsPosInit.NONE
                  else "a new random one is used")
        report.dropped[src.abs_pos_key] = ("pre-trained absolute embeddings not used "
                                           f"(abs_pos_init={how.value}: {reason})")
    if how == AbsPosInit.NONE:
        return
    target = model_state["pos_embed"]
    if how == AbsPosInit.RANDOM:
        new_state["pos_embed"] = _random_like(target)
        report.missing["pos_embed"] = f"truncated normal, std {_RANDOM_STD} (abs_pos_init=random)"
        return
    if src.abs_pos is None:
        raise CheckpointError(f"abs_pos_init=pretrained, but the {src.layout.value} checkpoint "
                              f"has no absolute position embeddings; "
                              f"use abs_pos_init=random or none")
    grid = tuple(target.shape[1:3])
    # the stored tensor as is (MAE's and MoCo v3's sin-cos layouts differ: never regenerate)
    pos = resize_abs_pos(src.abs_pos, grid, src.num_prefix_tokens)
    new_state["pos_embed"] = pos
    report.loaded["pos_embed"] = src.abs_pos_key
    if list(src.abs_pos.shape) != list(pos.shape):
        if src.abs_pos.dim() == 4:  # ours: already a grid
            side, steps = src.abs_pos.shape[1], []
        else:
            side = math.isqrt(src.abs_pos.shape[1] - src.num_prefix_tokens)
            steps = [(f"{src.num_prefix_tokens} prefix-token slot(s) removed, tokens laid out "
                      f"as the stored {side}x{side} grid")]
        if (side, side) != grid:
            steps.append(f"bicubic {side}x{side} -> {grid[0]}x{grid[1]}")
        report.shape_changes.append(ShapeChange("pos_embed", src.abs_pos_key,
                                                list(src.abs_pos.shape), list(pos.shape),
                                                "; ".join(steps)))


def _pretrained_rel_tables(vit: ViT, src: SourceViT, kinds: list[str]
                           ) -> dict[str, tuple[RelTable, set[str]]]:
    """For each attention kind the model has ("window", "global"): the checkpoint table to use
    and the checkpoint keys it stands for."""
    out: dict[str, tuple[RelTable, set[str]]] = {}
    for kind in kinds:
        if src.rel_by_kind:  # ours: one table per kind already
            if kind not in src.rel_by_kind:
                raise CheckpointError(f"rel_pos_init=pretrained, but the checkpoint has no {kind}-"
                                      f"attention table ({_REL_KEYS[kind]}); use zero or random")
            rel = src.rel_by_kind[kind]
            out[kind] = (rel, {rel.source})
        elif src.rel_shared is not None:  # BEiT: one table serves both kinds
            out[kind] = (src.rel_shared, {src.rel_shared.source})
        elif src.rel_per_block:
            # per-block tables -> one shared table per kind: their mean over the blocks of that
            # kind (the detection backbone shares one table across all blocks of a kind)
            blocks = [i for i, b in enumerate(vit.blocks)
                      if bool(b.window_size) == (kind == "window")]
            lacking = [i for i in blocks if i not in src.rel_per_block]
            if lacking:
                raise CheckpointError(f"per-block relative tables missing for blocks {lacking}")
            tables = [src.rel_per_block[i] for i in blocks]
            mean = torch.stack([t.table.float() for t in tables]).mean(0).to(tables[0].table.dtype)
            first = tables[0]
            source = f"mean({', '.join(t.source for t in tables)})"
            out[kind] = (RelTable(mean, source, first.stored_shape, first.how),
                         {t.source for t in tables})
        else:
            raise CheckpointError(f"rel_pos_init=pretrained, but the {src.layout.value} "
                                  f"checkpoint has no relative-position tables; "
                                  f"use rel_pos_init=zero or random")
    return out


def _init_rel_pos(vit: ViT, src: SourceViT, how: RelPosInit, model_state: dict[str, torch.Tensor],
                  new_state: dict[str, torch.Tensor], report: LoadReport) -> None:
    """Fill the shared window / global tables as ``how`` says; unused stored tables are dropped."""
    kinds = [k for k, key in _REL_KEYS.items() if key in model_state]
    used: set[str] = set()
    if how == RelPosInit.PRETRAINED:
        for kind, (rel, sources) in _pretrained_rel_tables(vit, src, kinds).items():
            key = _REL_KEYS[kind]
            side = rel_table_side(model_state[key])
            table = resize_rel_table(rel.table, side)
            new_state[key] = table
            report.loaded[key] = rel.source
            used |= sources
            src_side = rel_table_side(rel.table)
            steps = [rel.how] if rel.how else []
            if src_side != side:
                steps.append(f"bicubic over the offset plane {src_side}x{src_side} "
                             f"-> {side}x{side}")
            if rel.stored_shape != list(table.shape) or steps:
                report.shape_changes.append(ShapeChange(key, rel.source, rel.stored_shape,
                                                        list(table.shape), "; ".join(steps)))
    elif how in (RelPosInit.ZERO, RelPosInit.RANDOM):
        for kind in kinds:
            key = _REL_KEYS[kind]
            if how == RelPosInit.ZERO:
                new_state[key] = torch.zeros_like(model_state[key])
                report.missing[key] = "zeros (rel_pos_init=zero)"
            else:
                new_state[key] = _random_like(model_state[key])
                report.missing[key] = f"truncated normal, std {_RANDOM_STD} (rel_pos_init=random)"

    stored = [src.rel_shared, *src.rel_per_block.values(), *src.rel_by_kind.values()]
    for rel in stored:
        if rel is None or rel.source in used:
            continue
        if how == RelPosInit.PRETRAINED:  # only ours can leave one over: a kind the model lacks
            reason = "the model has no blocks of this attention kind"
        else:
            reason = f"pre-trained relative biases not used (rel_pos_init={how.value})"
        report.dropped[rel.source] = reason
