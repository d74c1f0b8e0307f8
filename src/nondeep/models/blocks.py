"""ParNet's building blocks and their structural reparameterisation.

`RepVGGBlock` covers both of the paper's block kinds, as the authors' code does:
- stride 1 and in == out (the **RepVGG-SSE block**): 3x3 conv-BN + 1x1 conv-BN + BN(x) gated by a
  skip-squeeze-excitation (SSE) computed from that BN output; summed, then SiLU.
- stride 2 or in != out (the **downsampling block**): 3x3 conv-BN (stride s) + 1x1 conv-BN (after a 2x2
  average pool when s = 2), summed, multiplied by 2 * sigmoid(SE(x)) of the block's input, then SiLU.
`FusionBlock` joins two streams: BN on each, channel interleave, a downsampling block with groups = 2, then a
channel shuffle.

`reparameterize()` folds the 3x3 and 1x1 branches (and, without the SSE gate, the identity BN) into one 3x3
conv with bias, in place. The SSE-gated BN branch cannot fold (the gate depends on the input), so it stays.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ._helpers import channel_shuffle

BlockType = Literal["rep_sse", "rep", "plain"]
BLOCK_TYPES: tuple[str, ...] = ("rep_sse", "rep", "plain")


class ConvBN(nn.Sequential):
    """Conv without bias, then BatchNorm: the unit that folds into one conv with bias."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fuse_conv_bn_weights(self.conv.weight, None, self.bn.running_mean, self.bn.running_var,
                                    self.bn.eps, self.bn.weight, self.bn.bias)


class ConvBNAct(nn.Module):
    """Conv-BN-SiLU (the small-image head's 1x1 conv); `reparameterize()` folds the BN into the conv."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv_bn: ConvBN | None = ConvBN(in_chs, out_chs, kernel_size)
        self.conv: nn.Conv2d | None = None
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) if self.conv is not None else self.conv_bn(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.conv_bn is None:
            return
        src = self.conv_bn.conv
        self.conv = _conv_like(src, *self.conv_bn.fused_kernel_bias())
        self.conv_bn = None


class SqueezeGate(nn.Module):
    """Global average pool -> 1x1 conv (no bias) -> sigmoid, times `scale`: a per-channel gate."""

    def __init__(self, in_chs: int, out_chs: int, groups: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, groups=groups, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return gate * self.scale if self.scale != 1.0 else gate


class RepVGGBlock(nn.Module):
    """ParNet's RepVGG-SSE block (stride 1, in == out) or downsampling block (otherwise); see module doc.

    block_type: "rep_sse" (the paper's), "rep" (RepVGG: no gate, so the identity BN folds as well) or
    "plain" (one 3x3 conv-BN-SiLU), for the ablations.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, groups: int = 1,
                 block_type: BlockType = "rep_sse") -> None:
        super().__init__()
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        self.in_chs, self.out_chs, self.stride, self.groups = in_chs, out_chs, stride, groups
        self.block_type = block_type
        is_skip = in_chs == out_chs and stride == 1
        multi_branch = block_type != "plain"

        self.conv3x3: ConvBN | None = ConvBN(in_chs, out_chs, 3, stride, groups)
        self.conv1x1: nn.Module | None = None
        if multi_branch:
            pointwise = ConvBN(in_chs, out_chs, 1, 1, groups)
            # Stride 2: pool first so that the 1x1 branch sees every pixel (the authors' avg_pool=True).
            self.conv1x1 = nn.Sequential(nn.AvgPool2d(2), pointwise) if stride == 2 else pointwise
        self.skip_bn = nn.BatchNorm2d(in_chs) if (multi_branch and is_skip) else None
        self.gate: SqueezeGate | None = None
        if block_type == "rep_sse":
            # SSE on the skip branch; on a downsampling block the gate is computed from the input and scaled x2.
            self.gate = (SqueezeGate(in_chs, out_chs, groups) if is_skip
                         else SqueezeGate(in_chs, out_chs, groups, scale=2.0))
        self.reparam_conv: nn.Conv2d | None = None
        self.act = nn.SiLU()

    @property
    def is_reparameterized(self) -> bool:
        return self.reparam_conv is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            out = self.reparam_conv(x)
        else:
            out = self.conv3x3(x)
            if self.conv1x1 is not None:
                out = out + self.conv1x1(x)
        if self.skip_bn is not None:
            skip = self.skip_bn(x)
            out = out + (skip * self.gate(skip) if self.gate is not None else skip)
        elif self.gate is not None:
            out = out * self.gate(x)
        out = self.act(out)
        return channel_shuffle(out, self.groups) if self.groups > 1 else out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the conv branches (and an ungated identity BN) into one 3x3 conv with bias. Idempotent."""
        if self.reparam_conv is not None:
            return
        kernel, bias = self.conv3x3.fused_kernel_bias()
        if self.conv1x1 is not None:
            k1, b1 = _pointwise_as_3x3(self.conv1x1)
            kernel, bias = kernel + k1, bias + b1
        if self.skip_bn is not None and self.gate is None:
            k_id, b_id = _identity_bn_as_3x3(self.skip_bn, self.in_chs // self.groups)
            kernel, bias = kernel + k_id, bias + b_id
            self.skip_bn = None
        self.reparam_conv = _conv_like(self.conv3x3.conv, kernel, bias)
        self.conv3x3 = None
        self.conv1x1 = None


class FusionBlock(nn.Module):
    """Join a stream with the running fused features: BN each, interleave channels, grouped downsampling block.

    `forward(stream, fused)` takes two maps of `in_chs` channels at the same resolution.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2, block_type: BlockType = "rep_sse") -> None:
        super().__init__()
        self.bn_stream = nn.BatchNorm2d(in_chs)
        self.bn_fused = nn.BatchNorm2d(in_chs)
        self.block = RepVGGBlock(2 * in_chs, out_chs, stride, groups=2, block_type=block_type)

    def forward(self, stream: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        a, b = self.bn_stream(stream), self.bn_fused(fused)
        n, c, h, w = a.shape
        # Interleave channel by channel so that each of the two conv groups sees both inputs.
        joined = torch.stack((a, b), dim=2).reshape(n, 2 * c, h, w)
        return self.block(joined)


def _conv_like(template: nn.Conv2d, kernel: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    k = kernel.shape[-1]
    conv = nn.Conv2d(template.in_channels, template.out_channels, k, template.stride, k // 2,
                     groups=template.groups, bias=True, device=kernel.device, dtype=kernel.dtype)
    conv.weight.copy_(kernel)
    conv.bias.copy_(bias)
    return conv


def _pointwise_as_3x3(branch: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1x1 conv-BN branch as an equivalent 3x3 kernel (centre tap, or, after a 2x2 average pool with
    stride 2, the 2x2 lower-right taps at a quarter weight each: they cover the same pixels)."""
    if isinstance(branch, nn.Sequential) and isinstance(branch[0], nn.AvgPool2d):
        kernel, bias = branch[1].fused_kernel_bias()
        kernel = F.pad(kernel.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) / 4, [1, 0, 1, 0])
        return kernel, bias
    kernel, bias = branch.fused_kernel_bias()
    return F.pad(kernel, [1, 1, 1, 1]), bias


def _identity_bn_as_3x3(bn: nn.BatchNorm2d, in_per_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    channels = bn.num_features
    identity = torch.zeros(channels, in_per_group, 3, 3, device=bn.weight.device, dtype=bn.weight.dtype)
    identity[torch.arange(channels), torch.arange(channels) % in_per_group, 1, 1] = 1.0
    return fuse_conv_bn_weights(identity, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
