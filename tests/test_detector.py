"""The upgraded Mask R-CNN around the ViT: output contract, heads, fixed square input."""
import time

import pytest
import torch
from torch import nn

from vitdet_lib.config import DetectorConfig, ModelConfig, vit_config
from vitdet_lib.model import build_detector, build_vit_backbone
from vitdet_lib.model.detector import FixedSquareTransform


def small_cfg(multi_scale=True, image_size=64, **vit):
    base = {"patch_size": 16, "embed_dim": 64, "depth": 4, "num_heads": 2, "pretrain_img_size": 32}
    return ModelConfig(vit_config("tiny", **{**base, **vit}),
                       DetectorConfig(num_classes=3, image_size=image_size, multi_scale=multi_scale,
                                      fpn_channels=32, anchor_sizes=(8, 16, 32, 64, 128)))


def target(size):
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 4:20, 8:30] = 1
    masks[1, 30:60, 30:50] = 1
    return {"boxes": torch.tensor([[8.0, 4, 30, 20], [30, 30, 50, 60]]),
            "labels": torch.tensor([1, 3]), "masks": masks}


def test_multi_scale_strides_and_channels():
    bb = build_vit_backbone(small_cfg())
    spec = bb.output_shape()
    assert [s.stride for s in spec.values()] == [4, 8, 16, 32, 64]
    assert list(spec) == ["0", "1", "2", "3", "pool"]
    feats = bb(torch.randn(1, 3, 64, 64))
    for (name, s), f in zip(spec.items(), feats.values()):
        assert f.shape == (1, s.channels, 64 // s.stride, 64 // s.stride), name
    assert bb.roi_feature_names == ["0", "1", "2", "3"]


def test_single_scale_is_the_stride_16_map_only():
    bb = build_vit_backbone(small_cfg(multi_scale=False))
    assert {n: s.stride for n, s in bb.output_shape().items()} == {"0": 16}
    assert list(bb(torch.randn(1, 3, 64, 64))["0"].shape) == [1, 32, 4, 4]
    assert bb.vit.out_indexes == (3,)


def test_heads_are_the_papers_upgrades():
    model = build_detector(small_cfg())
    assert len(model.rpn.head.conv) == 2  # RPN with 2 convs
    head_convs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Conv2d)]
    head_fcs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
    assert len(head_convs) == 4 and len(head_fcs) == 1
    for part in (model.backbone.fpn, model.roi_heads.box_head, model.roi_heads.mask_head):
        assert any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())


@pytest.mark.parametrize("multi_scale", [True, False])
def test_train_and_eval_steps(multi_scale):
    model = build_detector(small_cfg(multi_scale))
    losses = model([torch.rand(3, 64, 64)], [target(64)])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                           "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert model.backbone.vit.blocks[0].attn.qkv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 40, 90)])[0]
    assert out["masks"].shape[-2:] == (40, 90)  # mapped back to the original size


def test_fixed_square_transform_pads_and_rescales():
    t = FixedSquareTransform(64, [0.0] * 3, [1.0] * 3).eval()
    images, _ = t([torch.ones(3, 32, 16), torch.ones(3, 64, 64)])
    assert images.tensors.shape == (2, 3, 64, 64)
    assert images.image_sizes == [(64, 32), (64, 64)]  # longest side scaled to 64
    assert images.tensors[0, :, :, 32:].abs().sum() == 0  # bottom-right padding
    t.train()
    tgt = target(64)
    _, out = t([torch.ones(3, 64, 64)], [tgt])
    torch.testing.assert_close(out[0]["boxes"], tgt["boxes"])  # LSJ output passes untouched
    t.eval()  # postprocess maps back at inference only
    boxes = torch.tensor([[0.0, 0, 32, 16]])
    post = t.postprocess([{"boxes": boxes, "labels": torch.tensor([1]), "scores": torch.ones(1)}],
                         [(64, 32)], [(32, 16)])
    torch.testing.assert_close(post[0]["boxes"], boxes / 2)


def _vit_b_detector():
    return build_detector(ModelConfig(vit_config("base"),
                                      DetectorConfig(num_classes=80, image_size=1024)))


def test_vit_b_detector_size():
    n_params = sum(p.numel() for p in _vit_b_detector().parameters())
    assert 110e6 < n_params < 125e6  # ~118.7M as MIMDet counts it


@pytest.mark.slow  # ~1 min and several GB on 2 CPU cores
def test_vit_b_detector_forward_backward_at_1024_on_cpu():
    model = _vit_b_detector()
    start = time.perf_counter()
    losses = model([torch.rand(3, 1024, 1024)], [target(1024)])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.backbone.vit.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    print(f"ViT-B 1024 train step on CPU: {time.perf_counter() - start:.1f}s")
