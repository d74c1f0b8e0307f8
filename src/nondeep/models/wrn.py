"""Wide Residual Networks (Zagoruyko & Komodakis 2016), CIFAR form, and the pre-activation blocks they share
with the deep thin pre-act ResNets (He et al. 2016, "Identity mappings in deep residual networks").

WRN-n-k: a 3x3 stem conv (16 channels), three groups of N blocks at widths 16k, 32k, 64k and strides 1, 2, 2,
a final BN-ReLU, global average pool and a linear classifier. The WRN paper names a basic-block net by
n = 6N + 4, counting the three 1x1 shortcut convs; they sit in parallel with the blocks, so the longest
conv/linear path (nondeep.measure.depth) is n - 2. Bottleneck nets follow He et al.: n = 9N + 2.

Multi-scale features (`feature_info`, `forward_intermediates`, `create_model(..., features_only=True)`): the
three groups' outputs, at reductions 1, 2 and 4 ("layer1", "layer2", and "act": the last group after the
final BN-ReLU; the first two are pre-activation sums, as the next block expects them).
"""

# No `from __future__ import annotations` here: torch.fx copies forward's annotations into the traced code,
# which TorchScript must read (timm's fx + script test).
import re
from typing import Any, Literal, Sequence

import torch
from torch import nn

from . import _helpers
from ._registry import CIFAR_CFG, register_model, register_model_pattern
from .features import feature_take_indices

BlockName = Literal["basic", "bottleneck"]
# The first conv and the unpooled map's size at 32x32 (timm's `first_conv` and `pool_size`).
WRN_CFG = dict(CIFAR_CFG, first_conv="conv1", pool_size=(8, 8))
DepthRule = Literal["wrn", "resnet"]


def conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride, padding=1, bias=False)


def conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 plus the input; a 1x1 conv shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_chs, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.shortcut = conv1x1(in_chs, planes, stride) if stride != 1 or in_chs != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        # The projection reads the pre-activated input, as in the authors' code: the BN-ReLU is shared.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.drop(self.act2(self.bn2(out))))
        return out + shortcut


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1 (4x wider out), the block of pre-act ResNet-164/1001.
    The stride sits on the 3x3 conv; `drop_rate` drops before the last conv, as the basic block does."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = conv1x1(in_chs, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.act3 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv3 = conv1x1(planes, out_chs)
        self.shortcut = conv1x1(in_chs, out_chs, stride) if stride != 1 or in_chs != out_chs else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        out = self.conv3(self.drop(self.act3(self.bn3(out))))
        return out + shortcut


_BLOCKS: dict[str, type[PreActBasicBlock] | type[PreActBottleneck]] = {
    "basic": PreActBasicBlock, "bottleneck": PreActBottleneck}


def blocks_per_group(depth: int, block: BlockName = "basic", depth_rule: DepthRule = "wrn") -> int:
    """N, the blocks in each of the three groups, for a net named by `depth`; ValueError if none fits.

    depth = (convs per block) x 3N + 2 (stem conv and fc), + 3 under the WRN paper's naming of basic-block
    nets, which also counts the three 1x1 shortcut convs ("wrn": 6N + 4; "resnet", He et al.: 6N + 2).
    Bottleneck nets are 9N + 2 under both rules.
    """
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
    if depth_rule not in ("wrn", "resnet"):
        raise ValueError(f"depth_rule must be 'wrn' or 'resnet', got {depth_rule!r}")
    per_group = 6 if block == "basic" else 9
    offset = 4 if block == "basic" and depth_rule == "wrn" else 2
    n, rest = divmod(depth - offset, per_group)
    if n < 1 or rest:
        valid = ", ".join(str(per_group * i + offset) for i in range(1, 7))
        raise ValueError(f"depth {depth} does not fit {block} blocks: the depth must be {per_group}N+{offset} "
                         f"for N >= 1 ({valid}, ...)")
    return n


class WideResNet(_helpers.ClassifierHead, nn.Module):
    """A pre-activation residual network for 32x32 images: WRN-`depth`-`widen_factor`, or, with
    `depth_rule="resnet"` and `widen_factor=1`, the thin pre-act ResNets it is compared with."""

    def __init__(self, depth: int, widen_factor: float, num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.0, block: BlockName = "basic", stem_width: int = 16,
                 depth_rule: DepthRule = "wrn", global_pool: str = "avg") -> None:
        super().__init__()
        n = blocks_per_group(depth, block, depth_rule)
        if widen_factor < 1 / 16:
            raise ValueError(f"widen_factor must be >= 1/16 (at least one channel), got {widen_factor}")
        block_cls = _BLOCKS[block]
        self.name = f"wrn_{depth}_{widen_factor:g}" if depth_rule == "wrn" else f"preact_resnet_{depth}"
        self.depth, self.widen_factor, self.block = depth, widen_factor, block
        self.in_chans, self.num_classes = in_chans, num_classes

        # A fractional k (the width-vs-depth lab matches parameter budgets with it) rounds each group's width.
        widths = [int(round(base * widen_factor)) for base in (16, 32, 64)]
        self.conv1 = conv3x3(in_chans, stem_width)
        in_chs, groups = stem_width, []
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(block_cls(in_chs, width, stride if i == 0 else 1, drop_rate))
                in_chs = width * block_cls.expansion
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = groups
        # Pre-activation blocks end on a conv: the last group's output still needs its BN-ReLU.
        self.bn = nn.BatchNorm2d(in_chs)
        self.act = nn.ReLU(inplace=True)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = _helpers.check_global_pool(global_pool, num_classes)
        self.fc: nn.Module = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        exp = block_cls.expansion
        self.feature_info = [
            dict(num_chs=widths[0] * exp, reduction=1, module="layer1"),
            dict(num_chs=widths[1] * exp, reduction=2, module="layer2"),
            dict(num_chs=widths[2] * exp, reduction=4, module="act")]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unpooled map after the final BN-ReLU. Sides must be multiples of 4, so that the two stride-2
        groups halve them exactly."""
        x = self.conv1(_helpers.check_input(x, self.name, self.in_chans, divisor=4))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.act(self.bn(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The maps of the `feature_info` levels in `indices` (default all; an int n: the last n), and unless
        `intermediates_only` the final unpooled map first, as `(final, intermediates)`. `stop_early` skips
        the groups after the last requested level (the final map is then the last one computed). `norm` is
        accepted for timm's callers and changes nothing: the final BN-ReLU is part of the last level, and the
        earlier levels are the pre-activation sums the next group takes. Only NCHW output."""
        if output_fmt != "NCHW":
            raise ValueError(f"{self.name} gives NCHW maps only, got output_fmt={output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.conv1(_helpers.check_input(x, self.name, self.in_chans, divisor=4))
        levels = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3)):
            x = layer(x)
            if i == 2:
                x = self.act(self.bn(x))
            levels.append(x)
            if stop_early and i >= max_index:
                break
        intermediates = [levels[i] for i in take]
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | Sequence[int] | None = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the classifier (unless `prune_head=False`, which needs the last level) and the groups after
        the last level in `indices`; forward_features then ends at that level. `feature_info` keeps its
        indices. `prune_norm` changes nothing: the final BN-ReLU belongs to the last level and goes with it."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        if not prune_head:
            if max_index < 2:
                raise ValueError("prune_head=False keeps the classifier, which needs the last group: include "
                                 "level 2 in indices or prune the head")
            return take
        self.reset_classifier(0)
        if max_index < 2:
            self.layer3, self.bn, self.act = nn.Identity(), nn.Identity(), nn.Identity()
        if max_index < 1:
            self.layer2 = nn.Identity()
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """As every family's (ClassifierHead), with the new head's bias at zero like the built one's."""
        super().reset_classifier(num_classes, global_pool)
        if num_classes > 0:
            nn.init.zeros_(self.fc.bias)


def _wrn_from_name(match: re.Match[str]) -> tuple[type[WideResNet], dict[str, Any]]:
    return WideResNet, {"depth": int(match[1]), "widen_factor": int(match[2])}


# Any wrn_<n>_<k>; the names below are the paper's (and Fashion-MNIST's benchmark) nets.
register_model_pattern(r"wrn_(\d+)_(\d+)", _wrn_from_name, cfg=WRN_CFG)


@register_model(cfg=WRN_CFG)
def wide_resnet(depth: int = 16, widen_factor: float = 4.0, **kwargs: Any) -> WideResNet:
    """Any WRN-n-k by arguments, k fractional too (each group's width rounded): what a sweep at a fixed
    parameter budget needs, e.g. create_model("wide_resnet", depth=10, widen_factor=2.2)."""
    return WideResNet(depth, widen_factor, **kwargs)


@register_model(cfg=WRN_CFG)
def wrn_16_1(**kwargs: Any) -> WideResNet:
    """WRN-16-1: 0.18 M parameters, a quick smoke-test net."""
    return WideResNet(16, 1, **kwargs)


@register_model(cfg=WRN_CFG)
def wrn_16_4(**kwargs: Any) -> WideResNet:
    """WRN-16-4: 2.7 M parameters."""
    return WideResNet(16, 4, **kwargs)


@register_model(cfg=WRN_CFG)
def wrn_16_8(**kwargs: Any) -> WideResNet:
    """WRN-16-8: 11.0 M parameters (paper: 11.0 M)."""
    return WideResNet(16, 8, **kwargs)


@register_model(cfg=WRN_CFG)
def wrn_22_8(**kwargs: Any) -> WideResNet:
    """WRN-22-8: 17.2 M parameters."""
    return WideResNet(22, 8, **kwargs)


@register_model(cfg=WRN_CFG)
def wrn_28_2(**kwargs: Any) -> WideResNet:
    """WRN-28-2: 1.5 M parameters."""
    return WideResNet(28, 2, **kwargs)


@register_model(cfg=WRN_CFG)
def wrn_28_10(**kwargs: Any) -> WideResNet:
    """WRN-28-10: 36.5 M parameters (paper: 36.5 M); the paper trains it with drop_rate=0.3."""
    return WideResNet(28, 10, **kwargs)


@register_model(cfg=WRN_CFG)
def wrn_40_2(**kwargs: Any) -> WideResNet:
    """WRN-40-2: 2.2 M parameters."""
    return WideResNet(40, 2, **kwargs)


@register_model(cfg=WRN_CFG)
def wrn_40_4(**kwargs: Any) -> WideResNet:
    """WRN-40-4: 8.9 M parameters (paper: 8.9 M)."""
    return WideResNet(40, 4, **kwargs)
