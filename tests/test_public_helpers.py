"""Helpers other modules call: ``ViT.clear_mask_cache`` and ``complexity.dummy_target``."""
import torch

from vitdet_lib.complexity import dummy_target
from vitdet_lib.config import AttentionLayout, vit_config
from vitdet_lib.model import ViT


def test_clear_mask_cache_makes_the_next_forward_rebuild_masks():
    cfg = vit_config("tiny", patch_size=4, embed_dim=32, depth=8, num_heads=2,
                     pretrain_img_size=16, attention=AttentionLayout.HYBRID)
    vit = ViT(cfg, img_size=32).eval()
    with torch.no_grad():
        first = vit.attention_masks((9, 7), 1, torch.device("cpu"))
        assert vit.attention_masks((9, 7), 1, torch.device("cpu"))[0] is first[0]  # cached
        vit.clear_mask_cache()
        rebuilt = vit.attention_masks((9, 7), 1, torch.device("cpu"))
    assert rebuilt[0] is not first[0]
    torch.testing.assert_close(rebuilt[0], first[0])


def test_dummy_target_is_a_valid_mask_rcnn_target():
    t = dummy_target(64, 2, torch.device("cpu"))
    assert t["boxes"].shape == (3, 4) and t["masks"].shape == (3, 64, 64)
    assert ((t["labels"] >= 1) & (t["labels"] <= 2)).all()
    assert (t["boxes"][:, :2] < t["boxes"][:, 2:]).all() and (t["boxes"] <= 64).all()
    for box, mask in zip(t["boxes"].long(), t["masks"]):  # each mask fills its box exactly
        assert mask.sum() == (box[2] - box[0]) * (box[3] - box[1])
        assert mask[box[1]:box[3], box[0]:box[2]].all()
