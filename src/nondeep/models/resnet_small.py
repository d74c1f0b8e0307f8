"""torchvision's ResNet-18/34 adapted to small images (3x3 stride-1 stem, no max-pool): the usual CIFAR /
Fashion-MNIST baseline (the dataset's own benchmark lists ResNet-18 at 94.9%)."""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from . import _helpers
from ._registry import CIFAR_CFG, register_model


class SmallImageResNet(torchvision.models.ResNet):
    """A torchvision ResNet whose stem keeps the resolution: conv3x3 stride 1, no max-pool."""

    def __init__(self, layers: list[int], num_classes: int = 10, in_chans: int = 3, name: str = "resnet") -> None:
        super().__init__(torchvision.models.resnet.BasicBlock, layers, num_classes=num_classes)
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        self.maxpool = nn.Identity()
        self.in_chans, self.num_classes, self.num_features, self.name = in_chans, num_classes, 512, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_helpers.check_input(x, self.name, self.in_chans))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


@register_model(cfg=CIFAR_CFG)
def resnet18_small_image(**kwargs: Any) -> SmallImageResNet:
    """torchvision ResNet-18, 3x3 stride-1 stem, no max-pool (11.2 M params, depth 18)."""
    return SmallImageResNet([2, 2, 2, 2], name="resnet18_small_image", **kwargs)


@register_model(cfg=CIFAR_CFG)
def resnet34_small_image(**kwargs: Any) -> SmallImageResNet:
    """torchvision ResNet-34, 3x3 stride-1 stem, no max-pool (21.3 M params, depth 34)."""
    return SmallImageResNet([3, 4, 6, 3], name="resnet34_small_image", **kwargs)
