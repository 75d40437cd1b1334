"""torchvision's compiled ops must load: the CPU-only torch wheel breaks them (the CUDA build,
which also runs on CPU machines, is the one to install)."""
import torch
import torchvision
from torchvision.ops import nms, roi_align


def test_versions_are_the_pinned_pair():
    assert torch.__version__.startswith("2.14"), torch.__version__
    assert torchvision.__version__.startswith("0.29"), torchvision.__version__


def test_nms_runs():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_roi_align_runs():
    feat = torch.arange(16.0).view(1, 1, 4, 4)
    out = roi_align(feat, [torch.tensor([[0.0, 0, 4, 4]])], output_size=2, aligned=True)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out.mean(), feat.mean())
