"""ParNet ("Non-deep Networks", Goyal et al. 2021): parallel streams at three resolutions, depth 12.

ImageNet form (the authors' `SimpNet`, widths [p1, p2, p3, last]):
    stem: downsampling 3 -> min(64, p1) -> p1 (1/4), then p1 -> p2 (1/8), p2 -> p3 (1/16)
    streams: 4, 5, 5 RepVGG-SSE blocks on the three stem outputs
    stream 1 -> downsampling p1 -> p2; fusion with stream 2 (-> p3, 1/16); fusion with stream 3 (stride 1)
    head: downsampling p3 -> last (1/32), global average pool, dropout, linear.
Small-image form (the authors' CIFAR description, their issue #11): the two stem downsamplings keep the
resolution (stride 1), one RepVGG-SSE block is added at depth 3, each stream loses a block (3, 4, 4), and
the last wide downsampling block becomes a narrower 1x1 conv-BN-SiLU. Both forms measure depth 12.

`num_streams`, `width_multiplier` and `block_type` make the paper's ablations builder calls.

Multi-scale features (`feature_info`, `forward_intermediates`, `create_model(..., features_only=True)`): one
level per stream but the last, the fused map, and the head conv. With 3 streams:
    0: stream 1's output ("streams.0", p1)    reduction 4 (ImageNet form) / 1 (small-image form)
    1: stream 2's output ("streams.1", p2)              8 / 2
    2: the last fusion's output ("fusions.1", p3: all streams merged)   16 / 4
    3: the head conv ("head_conv", head width)         32 / 4
The levels at 1/4 and 1/8 are the streams' outputs rather than the stem's: the stem's maps are 2 (resp. 3)
layers deep, the streams' 6 (resp. 8), and they are what the network itself fuses. No map at 1/8 has been
through a fusion: the first fusion already downsamples to 1/16.
"""

# No `from __future__ import annotations` here: torch.fx copies forward's annotations into the traced code,
# which TorchScript must read (timm's fx + script test).
from typing import Any, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import _helpers
from ._registry import CIFAR_CFG, default_cfg, register_model
from .blocks import BlockType, ConvBNAct, FusionBlock, RepVGGBlock
from .features import feature_take_indices


class ParNet(_helpers.ClassifierHead, nn.Module):
    """A ParNet. `widths` has one entry a stream plus the head width; `stream_depths` one entry a stream."""

    def __init__(self, widths: Sequence[int] = (96, 192, 384, 1280), stream_depths: Sequence[int] = (4, 5, 5),
                 num_classes: int = 1000, in_chans: int = 3, small_image: bool = False,
                 block_type: BlockType = "rep_sse", drop_rate: float = 0.0, name: str = "parnet",
                 global_pool: str = "avg") -> None:
        super().__init__()
        num_streams = len(stream_depths)
        if num_streams < 1 or len(widths) != num_streams + 1:
            raise ValueError(f"widths needs one entry per stream plus the head width: got {len(widths)} widths "
                             f"for {num_streams} streams")
        *stream_widths, head_width = widths
        self.name, self.in_chans, self.num_classes = name, in_chans, num_classes
        self.num_streams = num_streams
        self.small_image, self.block_type = small_image, block_type
        self.num_features = self.head_hidden_size = head_width
        stem_stride = 1 if small_image else 2
        # Every later stream starts one stride-2 block further down; the stem divides by 4 in ImageNet form.
        self.input_divisor = stem_stride ** 2 * 2 ** (num_streams - 1) * (1 if small_image else 2)

        def block(i: int, o: int, s: int = 1) -> RepVGGBlock:
            return RepVGGBlock(i, o, s, block_type=block_type)

        p1 = stream_widths[0]
        stem = [block(in_chans, min(64, p1), stem_stride), block(min(64, p1), p1, stem_stride)]
        if small_image:
            stem.append(block(p1, p1))
        self.stem = nn.Sequential(*stem)
        # downsamples[i] turns the input of stream i into the input of stream i + 1.
        self.downsamples = nn.ModuleList(block(a, b, 2) for a, b in zip(stream_widths, stream_widths[1:]))
        self.streams = nn.ModuleList(
            nn.Sequential(*(block(w, w) for _ in range(n - small_image))) for w, n in zip(stream_widths, stream_depths))
        # The first stream is brought down to the second's resolution, then each later stream fuses in;
        # the last fusion keeps its resolution and width.
        self.first_stream_down = block(stream_widths[0], stream_widths[1], 2) if num_streams > 1 else None
        self.fusions = nn.ModuleList(
            FusionBlock(w, stream_widths[min(i + 2, num_streams - 1)], 2 if i + 2 < num_streams else 1, block_type)
            for i, w in enumerate(stream_widths[1:]))
        last_width = stream_widths[-1]
        self.head_conv = ConvBNAct(last_width, head_width, 1) if small_image else block(last_width, head_width, 2)
        self.drop_rate = drop_rate
        self.global_pool = _helpers.check_global_pool(global_pool, num_classes)
        self.fc: nn.Module = nn.Linear(head_width, num_classes) if num_classes > 0 else nn.Identity()
        # Levels for features_only (see the module doc): streams but the last, the fused map, the head conv.
        stem_reduction = stem_stride ** 2
        self.feature_info = [
            dict(num_chs=w, reduction=stem_reduction * 2 ** i, module=f"streams.{i}")
            for i, w in enumerate(stream_widths[:-1])]
        fused_reduction = stem_reduction * 2 ** (num_streams - 1)
        self.feature_info.append(dict(num_chs=last_width, reduction=fused_reduction,
                                      module=f"fusions.{len(self.fusions) - 1}" if len(self.fusions) else "streams.0"))
        self.feature_info.append(dict(num_chs=head_width, reduction=fused_reduction * (1 if small_image else 2),
                                      module="head_conv"))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def stream_inputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The stem's outputs: one map per stream, each at half the resolution of the one before."""
        x = self.stem(_helpers.check_input(x, self.name, self.in_chans, self.input_divisor))
        inputs = [x]
        for down in self.downsamples:
            inputs.append(down(inputs[-1]))
        return inputs

    def merge_streams(self, outputs: List[torch.Tensor]) -> torch.Tensor:
        """Merge the streams' outputs through the fusion blocks: the map at the last stream's resolution."""
        fused = outputs[0]
        if self.first_stream_down is not None:
            fused = self.first_stream_down(fused)
        for i, fusion in enumerate(self.fusions):
            fused = fusion(outputs[i + 1], fused)
        return fused

    def fuse_streams(self, outputs: List[torch.Tensor]) -> torch.Tensor:
        """Merge the streams' outputs through the fusion blocks, then the head conv (the unpooled features).
        A model pruned to an early stream (prune_intermediate_layers) has no fusions: its last stream's output
        is the final map."""
        if len(outputs) < self.num_streams:
            return outputs[-1]
        return self.head_conv(self.merge_streams(outputs))

    def forward_streams(self, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        outputs: List[torch.Tensor] = []
        for i, stream in enumerate(self.streams):
            outputs.append(stream(inputs[i]))
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse_streams(self.forward_streams(self.stream_inputs(x)))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The maps of the `feature_info` levels in `indices` (default all; an int n: the last n), and unless
        `intermediates_only` the final unpooled map first, as `(final, intermediates)`. `stop_early` skips
        what comes after the last requested level (the final map is then the last one computed). `norm` is
        accepted for timm's callers and changes nothing: ParNet has no final norm. Only NCHW output."""
        if output_fmt != "NCHW":
            raise ValueError(f"ParNet gives NCHW maps only, got output_fmt={output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        last = self.num_streams - 1  # the fused level; the head is last + 1
        inputs = self.stream_inputs(x)
        num_run = max_index + 1 if stop_early and max_index < last else len(self.streams)
        outs = [self.streams[i](inputs[i]) for i in range(num_run)]
        levels, final = outs[:last], outs[-1]
        if num_run == self.num_streams:  # not pruned (or stopped) before the fusions
            final = self.merge_streams(outs)
            levels.append(final)
            if not (stop_early and max_index <= last):
                final = self.head_conv(final)
                levels.append(final)
        intermediates = [levels[i] for i in take]
        return intermediates if intermediates_only else (final, intermediates)

    def prune_intermediate_layers(self, indices: int | Sequence[int] | None = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep only what the levels in `indices` need, so that every parameter left gets a gradient (DDP needs
        no `find_unused_parameters`): the classifier goes (unless `prune_head=False`, which needs the head
        level), the head conv unless its level is asked for, and when only stream levels are asked for, the
        fusions, the later streams and every earlier stream not asked for (its stem input still feeds the
        next stream). `feature_info` keeps its indices; forward_features then ends at the last level kept.
        `prune_norm` is accepted for timm's callers and changes nothing: ParNet has no final norm."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        last = self.num_streams - 1
        if not prune_head:
            if max_index <= last:
                raise ValueError("prune_head=False keeps the classifier, which needs the head conv: include the "
                                 f"last level ({last + 1}) in indices or prune the head")
            return take
        self.reset_classifier(0)
        if max_index <= last:
            self.head_conv = nn.Identity()
        if max_index < last:
            streams = [self.streams[i] if i in take else nn.Identity() for i in range(max_index + 1)]
            self.streams = nn.ModuleList(streams)
            self.downsamples = self.downsamples[:max_index]
            self.fusions = nn.ModuleList()
            self.first_stream_down = None
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)


# The configs name the first conv and the unpooled map's size at the default input (timm's `first_conv`
# and `pool_size`; timm's model tests check both against the built model).
FIRST_CONV = "stem.0.conv3x3.conv"
IMAGENET_CFG = default_cfg(first_conv=FIRST_CONV, pool_size=(7, 7))
SMALL_IMAGE_CFG = dict(CIFAR_CFG, first_conv=FIRST_CONV, pool_size=(8, 8))

# The paper's ImageNet variants: widths of the three streams and of the head.
IMAGENET_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "s": (96, 192, 384, 1280), "m": (128, 256, 512, 2048), "l": (160, 320, 640, 2560), "xl": (200, 400, 800, 3200),
}


def _create_parnet(name: str, widths: Sequence[int], stream_depths: Sequence[int] = (4, 5, 5),
                   num_streams: int | None = None, width_multiplier: float = 1.0,
                   head_width: int | None = None, **kwargs: Any) -> ParNet:
    """Scale the widths, and for `num_streams` != 3 continue the pattern: each new stream doubles the width
    and has 5 blocks; fewer streams keep the first ones."""
    *stream_widths, head = widths
    if num_streams is not None:
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        depths = list(stream_depths)
        while len(stream_widths) < num_streams:
            stream_widths.append(stream_widths[-1] * 2)
            depths.append(depths[-1])
        stream_widths, stream_depths = stream_widths[:num_streams], depths[:num_streams]
    widths = [max(8, int(round(w * width_multiplier / 8)) * 8) for w in stream_widths]
    head = head_width or max(8, int(round(head * width_multiplier / 8)) * 8)
    return ParNet([*widths, head], stream_depths, name=name, **kwargs)


def _imagenet_or_small(variant: str, small_image: bool = False, **kwargs: Any) -> ParNet:
    widths = IMAGENET_WIDTHS[variant]
    if small_image:
        # The CIFAR form's head is a narrower 1x1 conv: twice the last stream's width instead of ~3.3x.
        widths = (*widths[:3], 2 * widths[2])
        model = _create_parnet(f"parnet_{variant}", widths, (4, 5, 5), small_image=True,
                               **{"num_classes": 10, **kwargs})
        model.pretrained_cfg = dict(SMALL_IMAGE_CFG)
        return model
    return _create_parnet(f"parnet_{variant}", widths, (4, 5, 5), **kwargs)


@register_model(cfg=IMAGENET_CFG)
def parnet_s(**kwargs: Any) -> ParNet:
    """ParNet-S: widths 96, 192, 384, head 1280; 19.2 M parameters fused (paper: 19.0 M)."""
    return _imagenet_or_small("s", **kwargs)


@register_model(cfg=IMAGENET_CFG)
def parnet_m(**kwargs: Any) -> ParNet:
    """ParNet-M: widths 128, 256, 512, head 2048; 35.6 M parameters fused (paper: 35.6 M)."""
    return _imagenet_or_small("m", **kwargs)


@register_model(cfg=IMAGENET_CFG)
def parnet_l(**kwargs: Any) -> ParNet:
    """ParNet-L: widths 160, 320, 640, head 2560; 54.9 M parameters fused (paper: 54.9 M)."""
    return _imagenet_or_small("l", **kwargs)


@register_model(cfg=IMAGENET_CFG)
def parnet_xl(**kwargs: Any) -> ParNet:
    """ParNet-XL: widths 200, 400, 800, head 3200; 85.0 M parameters fused (paper: 85.0 M)."""
    return _imagenet_or_small("xl", **kwargs)


@register_model(cfg=SMALL_IMAGE_CFG)
def parnet_small_image_s(**kwargs: Any) -> ParNet:
    """ParNet-S widths in the small-image (CIFAR, 32x32 / 28x28) form."""
    return _imagenet_or_small("s", small_image=True, **kwargs)


@register_model(cfg=SMALL_IMAGE_CFG)
def parnet_small_image_m(**kwargs: Any) -> ParNet:
    """ParNet-M widths in the small-image (CIFAR, 32x32 / 28x28) form."""
    return _imagenet_or_small("m", small_image=True, **kwargs)


@register_model(cfg=SMALL_IMAGE_CFG)
def parnet_tiny(**kwargs: Any) -> ParNet:
    """The paper's structure in small-image form at a width that trains on 2 CPU cores: widths 16, 32, 64,
    head 128 (0.35 M parameters; ~330 training images/s at 28x28 on 2 CPU cores), depth 12."""
    return _create_parnet("parnet_tiny", (16, 32, 64, 128), (4, 5, 5), small_image=True,
                          **{"num_classes": 10, **kwargs})
