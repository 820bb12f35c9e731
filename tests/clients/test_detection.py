"""torchvision detection on a mixerzoo backbone: FasterRCNN over timm's ``features_only`` feature maps and
torchvision's FPN (the snippet in the README's "Use with torchvision detection" section), one training step and
evaluation on two synthetic images."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch
from torch import nn

import mixerzoo  # noqa: F401 - registers the mz_* names with timm

detection = pytest.importorskip("torchvision.models.detection")
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool  # noqa: E402


class TimmFPN(nn.Module):
    """timm ``features_only`` backbone + torchvision FPN: the ``backbone`` torchvision's detectors expect
    (a module returning an OrderedDict of feature maps, with ``out_channels``)."""

    def __init__(self, name: str, out_indices: tuple[int, ...] = (1, 2, 3), out_channels: int = 32) -> None:
        super().__init__()
        self.body = timm.create_model(name, features_only=True, out_indices=out_indices)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def faster_rcnn(name: str, num_classes: int, size: int) -> nn.Module:
    backbone = TimmFPN(name)
    levels = len(backbone.body.feature_info.channels()) + 1  # + the max-pooled level
    anchors = AnchorGenerator(sizes=tuple((16 * 2**i,) for i in range(levels)), aspect_ratios=((0.5, 1.0, 2.0),) * levels)
    roi_pool = MultiScaleRoIAlign(featmap_names=[str(i) for i in range(levels - 1)], output_size=7, sampling_ratio=2)
    return detection.FasterRCNN(backbone, num_classes=num_classes, rpn_anchor_generator=anchors,
                                box_roi_pool=roi_pool, min_size=size, max_size=size,
                                rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,  # small: a test
                                rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_batch_size_per_image=64,
                                image_mean=list(backbone.body.pretrained_cfg["mean"]),
                                image_std=list(backbone.body.pretrained_cfg["std"]))


@pytest.mark.parametrize("name", ["mz_test_poolformer", "mz_test_nat"])
def test_faster_rcnn_trains_and_evaluates_on_mz_features(name):
    model = faster_rcnn(name, num_classes=3, size=96)
    feats = model.backbone.body(torch.randn(1, 3, 96, 96))
    assert [f.shape[1] for f in feats] == model.backbone.body.feature_info.channels()
    images = [torch.rand(3, 96, 96), torch.rand(3, 72, 96)]  # NAT: /32 map >= its 3x3 window
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0], [34.0, 20.0, 60.0, 45.0]]),
                "labels": torch.tensor([2, 1])}]
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)  # the mz backbone is trained too
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(set(o) == {"boxes", "labels", "scores"} for o in out)
    assert all(o["boxes"].shape[1:] == (4,) and o["boxes"].shape[0] == o["scores"].shape[0] for o in out)
