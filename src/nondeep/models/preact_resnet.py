"""The deep thin baselines of the WRN paper: pre-activation ResNets (He et al. 2016, "Identity mappings").

They are WideResNets at widen factor 1 named by the ResNet rule (`depth_rule="resnet"`): basic-block nets
are 6N + 2 deep and bottleneck nets 9N + 2, the 1x1 shortcut convs not counted, so the measured depth
(nondeep.measure.depth) equals the name. Shortcuts are 1x1 projections where the shape changes (the paper's
CIFAR ResNet-20/56/110 used parameter-free zero-padding instead; the projections add < 1% parameters).
"""

from __future__ import annotations

from typing import Any

from ._registry import register_model
from .wrn import WRN_CFG, BlockName, WideResNet


def _preact_resnet(depth: int, block: BlockName, **kwargs: Any) -> WideResNet:
    return WideResNet(depth, 1, block=block, depth_rule="resnet", **kwargs)


@register_model(cfg=WRN_CFG)
def preact_resnet_20(**kwargs: Any) -> WideResNet:
    """Pre-act ResNet-20: basic blocks, N = 3; 0.27 M parameters."""
    return _preact_resnet(20, "basic", **kwargs)


@register_model(cfg=WRN_CFG)
def preact_resnet_56(**kwargs: Any) -> WideResNet:
    """Pre-act ResNet-56: basic blocks, N = 9; 0.86 M parameters."""
    return _preact_resnet(56, "basic", **kwargs)


@register_model(cfg=WRN_CFG)
def preact_resnet_110(**kwargs: Any) -> WideResNet:
    """Pre-act ResNet-110: basic blocks, N = 18; 1.7 M parameters."""
    return _preact_resnet(110, "basic", **kwargs)


@register_model(cfg=WRN_CFG)
def preact_resnet_164(**kwargs: Any) -> WideResNet:
    """Pre-act ResNet-164: bottleneck blocks, N = 18; 1.7 M parameters (WRN paper: 1.7 M)."""
    return _preact_resnet(164, "bottleneck", **kwargs)


@register_model(cfg=WRN_CFG)
def preact_resnet_1001(**kwargs: Any) -> WideResNet:
    """Pre-act ResNet-1001: bottleneck blocks, N = 111; 10.3 M parameters (WRN paper: 10.2 M)."""
    return _preact_resnet(1001, "bottleneck", **kwargs)
