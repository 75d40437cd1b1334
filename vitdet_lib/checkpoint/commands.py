"""``vitdet-bench convert``: an official (or our own) checkpoint -> our backbone state dict.

Runs :func:`initialize_backbone` exactly as fine-tuning does, writes the ViT's state dict
(keys as in ``ViT.state_dict()``, position information already at the detection grid) and
prints the load report. The output loads back with ``--kind detector``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ..config import VIT_SIZES, ConfigError, RelPos, ViTConfig, vit_config
from ..io import torch_save_atomic, write_text_atomic
from ..model.vit import ViT
from .init import AbsPosInit, InitConfig, InitKind, RelPosInit
from .load import initialize_backbone
from .read import read_checkpoint_file

# BEiT-B's layer-scale init; any value > 0 gives the model the gammas the checkpoint fills
_BEIT_LAYER_SCALE = 0.1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert a MAE / MoCo v3 / DeiT / BEiT / detector checkpoint into our ViT backbone",
        description="Read a checkpoint, convert and resize it for the detection ViT as fine-tuning "
                    "would, write the backbone state dict and print what was loaded, dropped and "
                    "resized.")
    p.add_argument("--kind", required=True,
                   choices=[k.value for k in InitKind if k != InitKind.RANDOM])
    p.add_argument("--checkpoint", required=True, help="input checkpoint file")
    p.add_argument("--size", default="base", choices=sorted(VIT_SIZES), help="ViT size preset")
    p.add_argument("--out", required=True, help="output .pth (written atomically)")
    p.add_argument("--img-size", type=int, default=1024,
                   help="detection input side (sets the grid)")
    p.add_argument("--rel-pos-init", choices=[v.value for v in RelPosInit], default=None,
                   help="default: the paper's for --kind; 'none' also builds the ViT "
                        "without rel-pos")
    p.add_argument("--abs-pos-init", choices=[v.value for v in AbsPosInit], default=None,
                   help="default: the paper's for --kind; 'none' also builds the ViT "
                        "without abs-pos")
    p.add_argument("--vit", action="append", default=[], metavar="KEY=VALUE",
                   help="ViTConfig override (repeatable), e.g. attention=window, "
                        "pretrain_img_size=224")
    p.add_argument("--report-json", default=None, help="also write the load report as JSON here")
    p.set_defaults(func=run_convert)


def convert_vit_config(args: argparse.Namespace) -> ViTConfig:
    """The ViT config ``convert`` builds: the size preset, what the options imply, overrides."""
    overrides: dict[str, Any] = {}
    if args.kind == InitKind.BEIT.value:
        overrides["layer_scale_init"] = _BEIT_LAYER_SCALE
    # the command builds the model itself, so "none" treatments also shape it
    if args.rel_pos_init == RelPosInit.NONE.value:
        overrides["rel_pos"] = RelPos.NONE.value
    if args.abs_pos_init == AbsPosInit.NONE.value:
        overrides["use_abs_pos"] = False
    for item in args.vit:
        if "=" not in item:
            raise ConfigError(f"--vit {item!r} is not of the form KEY=VALUE")
        key, raw = item.split("=", 1)
        overrides[key] = yaml.safe_load(raw)
    return vit_config(args.size, **overrides)


def run_convert(args: argparse.Namespace) -> int:
    # a bad checkpoint or option raises before anything is written; cli.main reports it (exit 2)
    vit_cfg = convert_vit_config(args)
    obj = read_checkpoint_file(args.checkpoint)  # before building a large ViT: fail fast
    vit = ViT(vit_cfg, img_size=args.img_size)
    init = InitConfig(kind=InitKind(args.kind), checkpoint=args.checkpoint,
                      rel_pos_init=RelPosInit(args.rel_pos_init) if args.rel_pos_init else None,
                      abs_pos_init=AbsPosInit(args.abs_pos_init) if args.abs_pos_init else None)
    report = initialize_backbone(vit, init, checkpoint=obj)
    torch_save_atomic(vit.state_dict(), args.out)
    if args.report_json:
        write_text_atomic(args.report_json, report.to_json())
    print(report.summary())
    print(f"wrote {Path(args.out)} ({len(vit.state_dict())} tensors)")
    return 0
