"""torchvision's ResNet-18/34 adapted to small images (3x3 stride-1 stem, no max-pool): the usual CIFAR /
Fashion-MNIST baseline (the dataset's own benchmark lists ResNet-18 at 94.9%)."""

# No `from __future__ import annotations` here: torch.fx copies forward's annotations into the traced code,
# which TorchScript must read (timm's fx + script test).
from typing import Any

import torch
import torchvision
from torch import nn

from . import _helpers
from ._registry import CIFAR_CFG, register_model


# The first conv and the unpooled map's size at 32x32 (timm's `first_conv` and `pool_size`).
SMALL_RESNET_CFG = dict(CIFAR_CFG, first_conv="conv1", pool_size=(4, 4))


class SmallImageResNet(_helpers.ClassifierHead, torchvision.models.ResNet):
    """A torchvision ResNet whose stem keeps the resolution: conv3x3 stride 1, no max-pool. It adds the
    timm-style split forward (`forward_features` / `forward_head`) and head reset of the other families."""

    def __init__(self, layers: list[int], num_classes: int = 10, in_chans: int = 3, name: str = "resnet",
                 global_pool: str = "avg") -> None:
        super().__init__(torchvision.models.resnet.BasicBlock, layers, num_classes=max(num_classes, 1))
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.maxpool = nn.Identity()
        self.in_chans, self.num_classes, self.name = in_chans, num_classes, name
        self.num_features = self.head_hidden_size = 512
        self.global_pool = _helpers.check_global_pool(global_pool, num_classes)
        if num_classes <= 0:
            self.fc = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(_helpers.check_input(x, self.name, self.in_chans))
        x = self.maxpool(self.relu(self.bn1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)


@register_model(cfg=SMALL_RESNET_CFG)
def resnet18_small_image(**kwargs: Any) -> SmallImageResNet:
    """torchvision ResNet-18, 3x3 stride-1 stem, no max-pool (11.2 M params, depth 18)."""
    return SmallImageResNet([2, 2, 2, 2], name="resnet18_small_image", **kwargs)


@register_model(cfg=SMALL_RESNET_CFG)
def resnet34_small_image(**kwargs: Any) -> SmallImageResNet:
    """torchvision ResNet-34, 3x3 stride-1 stem, no max-pool (21.3 M params, depth 34)."""
    return SmallImageResNet([3, 4, 6, 3], name="resnet34_small_image", **kwargs)
