"""Weight-decay groups and the warmup + cosine schedule."""
import itertools
import math

import pytest
import torch
from engine_toy import ToyDetector
from torch import nn

from vitdet_lib.engine.optim import build_optimizer, param_groups
from vitdet_lib.engine.schedule import WarmupCosineSchedule, iterations_for_epochs


def test_no_weight_decay_on_norms_biases_and_position_tables():
    model = ToyDetector()
    model.frozen = nn.Linear(2, 2)
    model.frozen.requires_grad_(False)
    groups = {g["group"]: g for g in param_groups(model.named_parameters(), weight_decay=0.1)}
    assert set(groups["decay"]["param_names"]) == {
        "backbone.patch_embed.weight", "box_head.weight", "cls_head.weight"}
    assert set(groups["no_decay"]["param_names"]) == {
        "backbone.pos_embed",  # 4-D, exempt by name
        "backbone.rel_pos_window_table",  # 2-D, exempt by name
        "backbone.norm.weight", "backbone.norm.bias", "backbone.gamma",
        "backbone.patch_embed.bias", "box_head.bias", "cls_head.bias"}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert sum(len(g["params"]) for g in opt.param_groups) == 11  # frozen ones left out


def test_schedule_warmup_peak_half_and_end():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineSchedule(opt, total_iters=1000, warmup_iters=100, warmup_factor=0.001)
    lrs = []
    for _ in range(1000):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    cos_w = 0.5 * (1 + math.cos(math.pi * 0.1))
    assert lrs[0] == pytest.approx(0.001)  # warmup start: warmup_factor x cos(0)
    assert max(lrs) == lrs[100] == pytest.approx(cos_w)  # peak at the end of warmup
    # mid-warmup: the linear ramp (half way from 0.001 to 1) times the cosine
    assert lrs[50] == pytest.approx((0.001 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert lrs[500] == pytest.approx(0.5)  # half at mid-schedule
    assert 0 < lrs[-1] < 1e-5 and opt.param_groups[0]["lr"] == 0.0  # ~0 at the end, 0 after
    assert all(a >= b for a, b in itertools.pairwise(lrs[100:]))  # monotone after warmup


def test_schedule_state_round_trip():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = WarmupCosineSchedule(opt, total_iters=50, warmup_iters=5)
    for _ in range(17):
        sched.step()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    sched2 = WarmupCosineSchedule(opt2, total_iters=50, warmup_iters=5)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    with pytest.raises(ValueError, match="differs"):
        WarmupCosineSchedule(opt2, total_iters=60, warmup_iters=5).load_state_dict(
            sched.state_dict())


def test_iterations_for_epochs():
    assert iterations_for_epochs(100, 118287, 64) == 184823
    assert iterations_for_epochs(0.25, 64, 8) == 2


def test_one_builder_exempts_class_and_mask_tokens():
    model = nn.Module()
    model.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
    model.decoder = nn.Module()
    model.decoder.mask_token = nn.Parameter(torch.zeros(1, 1, 8))
    model.decoder.proj = nn.Linear(8, 8)
    model.my_cls_token_proj = nn.Parameter(torch.zeros(8, 8))  # a weight, despite its name
    groups = {g["group"]: g for g in param_groups(model.named_parameters(), weight_decay=0.1)}
    assert set(groups["no_decay"]["param_names"]) == {
        "cls_token", "decoder.mask_token", "decoder.proj.bias"}
    assert set(groups["decay"]["param_names"]) == {"decoder.proj.weight", "my_cls_token_proj"}
