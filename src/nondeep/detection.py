"""Object detection on nondeep backbones: ParNet (or WRN) features -> FPN -> torchvision RetinaNet / Faster R-CNN.

    detector = create_detector("parnet_s", num_classes=91, detector="retinanet")
    losses = detector(images, targets)          # train mode: dict of losses
    detections = detector.eval()(images)        # eval mode: list of {"boxes", "labels", "scores"}

The backbone is `create_model(name, features_only=True, out_indices=...)` (models/features.py) under a
torchvision `FeaturePyramidNetwork`, as torchvision's `BackboneWithFPN` does for ResNets (which it cannot do
for ParNet: its levels are not a chain of named children). Defaults follow torchvision's ResNet-50 detectors:
- RetinaNet: the last three levels (ParNet ImageNet form: strides 8, 16, 32) plus P6 and P7 from P5
  (`LastLevelP6P7(256, 256)`, as in retinanet_resnet50_fpn_v2): 5 maps for its default 5-level anchors.
- Faster R-CNN: the last four levels (ParNet: strides 4, 8, 16, 32) plus a max-pooled P6: 5 maps.
With another number of maps, the anchor generator gets one size level per map (32, 64, 128, ... as
torchvision's), so any `out_indices` works.

The detector trains from scratch or from a trained classifier (`backbone` may be a model instance: load its
weights first). `nondeep.reparameterize_model(detector)` folds the backbone's RepVGG blocks for deployment.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from .errors import NondeepError
from .models import create_model
from .models.features import FeatureExtractor

DetectorName = Literal["retinanet", "fasterrcnn"]
DETECTORS: tuple[str, ...] = ("retinanet", "fasterrcnn")


class FPNBackbone(nn.Module):
    """A `FeatureExtractor` under a torchvision FPN: forward gives the OrderedDict of maps ("0", "1", ...,
    then the extra block's: "p6", "p7" or "pool") that torchvision's detectors take; `out_channels` is the
    FPN's width, the single int they read."""

    def __init__(self, body: FeatureExtractor, out_channels: int = 256, extra_blocks: nn.Module | None = None,
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), out_channels, extra_blocks=extra_blocks,
                                         norm_layer=norm_layer)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _default_out_indices(num_levels: int, detector: str) -> tuple[int, ...]:
    keep = 3 if detector == "retinanet" else 4
    return tuple(range(max(0, num_levels - keep), num_levels))


def create_detector(backbone: str | nn.Module = "parnet_s", num_classes: int = 91,
                    detector: DetectorName = "retinanet", out_indices: Sequence[int] | None = None,
                    fpn_channels: int = 256, backbone_kwargs: dict[str, Any] | None = None, **kw: Any) -> nn.Module:
    """A torchvision RetinaNet or FasterRCNN on a nondeep backbone with an FPN.

    backbone: a registry name (built with `backbone_kwargs`, e.g. `{"width_multiplier": 0.5}`) or a model
        with `feature_info` (e.g. a trained ParNet; its classifier is dropped).
    num_classes: as torchvision counts them: COCO is 91 (with background for Faster R-CNN).
    out_indices: the backbone's feature levels to use (see its `feature_info`); default as the module doc.
    **kw: go to the torchvision detector (`min_size`, `max_size`, `score_thresh`, `anchor_generator`, ...).
        The image mean/std default to the backbone's config, and the batch is padded to a multiple of the
        backbone's input divisor (32 for ParNet's ImageNet form).
    """
    from torchvision.models.detection import FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    if detector not in DETECTORS:
        raise NondeepError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if isinstance(backbone, str):
        model = create_model(backbone, **(backbone_kwargs or {}))
    elif backbone_kwargs:
        raise ValueError("backbone_kwargs only apply when the backbone is given by name")
    else:
        model = copy.deepcopy(backbone)  # the extractor prunes its model (the classifier goes): not the caller's
    if not hasattr(model, "feature_info"):
        raise NondeepError(f"{getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)} "
                           "has no feature_info: detection backbones are nondeep's ParNet and WideResNet models")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if out_indices is None:
        out_indices = _default_out_indices(len(model.feature_info), detector)
    body = FeatureExtractor(model, out_indices)

    if detector == "retinanet":
        extra: nn.Module = LastLevelP6P7(fpn_channels, fpn_channels)
        num_maps = len(body.out_indices) + 2
    else:
        extra = LastLevelMaxPool()
        num_maps = len(body.out_indices) + 1
    fpn_backbone = FPNBackbone(body, fpn_channels, extra_blocks=extra)

    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is not None and len(mean) == 3:
        kw.setdefault("image_mean", list(mean))
        kw.setdefault("image_std", list(std))
    kw.setdefault("size_divisible", math.lcm(32, int(getattr(model, "input_divisor", 32))))

    # torchvision's default anchors have 5 size levels; with another number of maps, one level per map.
    sizes = [32 * 2 ** i for i in range(num_maps)]
    if detector == "retinanet":
        if num_maps != 5 and "anchor_generator" not in kw:
            kw["anchor_generator"] = AnchorGenerator(
                tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes), ((0.5, 1.0, 2.0),) * num_maps)
        net = RetinaNet(fpn_backbone, num_classes, **kw)
    else:
        if num_maps != 5 and "rpn_anchor_generator" not in kw:
            kw["rpn_anchor_generator"] = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * num_maps)
        # RoI pooling reads the FPN's own levels (not the extra pooled one), as torchvision's default does.
        kw.setdefault("box_roi_pool", MultiScaleRoIAlign([str(i) for i in range(len(body.out_indices))], 7, 2))
        net = FasterRCNN(fpn_backbone, num_classes, **kw)
    net.backbone_cfg = cfg
    return net
