"""Shallow mimic students (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?").

A student has one wide hidden layer. Between the flattened input and that layer sits a linear bottleneck
of k units, with no nonlinearity: it factorises the big input x hidden weight matrix into two thin ones,
which the paper found speeds up and stabilises training (and it adds no depth of representation). The
conv student puts one conv + ReLU + max-pool layer in front (the paper's "SNN-CNN"). Train them on a
teacher's logits with an L2 loss (nondeep's mimic training); on labels they serve as the baseline.

Defaults: k = 250 is the paper's bottleneck for its TIMIT SNN-MIMIC students, and 8000 hidden units its
"8k" width; the 1000-unit student, the conv layer's 128 5x5 filters and the Fashion-MNIST input are ours.
"""

# No `from __future__ import annotations` here: torch.fx copies forward's annotations into the traced code,
# which TorchScript must read (timm's fx + script test).
from typing import Any, List, Sequence

import torch
from torch import nn

from . import _helpers
from ._registry import default_cfg, register_model

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}

# Flattening fixes the input size (timm's `fixed_input_size`); the conv student's first conv is "conv.0".
FASHION_MNIST_CFG = default_cfg(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,), num_classes=10,
                                crop_pct=1.0, fixed_input_size=True)


class ShallowMimicNet(_helpers.ClassifierHead, nn.Module):
    """flatten -> Linear(in, bottleneck) -> Linear(bottleneck, hidden) -> activation -> Linear(hidden, classes).

    `bottleneck=None` drops the linear bottleneck (the plain shallow net). `input_size` is (C, H, W) or (H, W);
    `in_chans` overrides C. `conv_layers > 0` puts that many conv + ReLU + 2x2 max-pool layers in front
    (`conv_channels` filters of `kernel_size`, same padding): the students of "how shallow can it be?".
    """

    def __init__(self, input_size: Sequence[int] = (1, 28, 28), num_classes: int = 10, hidden: int = 8000,
                 bottleneck: int | None = 250, activation: str = "relu", in_chans: int | None = None,
                 conv_layers: int = 0, conv_channels: int = 128, kernel_size: int = 5) -> None:
        super().__init__()
        if len(input_size) not in (2, 3):
            raise ValueError(f"input_size must be (C, H, W) or (H, W), got {tuple(input_size)}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        *c, h, w = input_size
        c = in_chans if in_chans is not None else (c[0] if c else 1)
        self.name = type(self).__name__
        self.input_size = (c, h, w)
        self.image_size: List[int] = [h, w]  # a list for TorchScript (check_input's exact_size)
        self.in_chans, self.num_classes = c, num_classes
        self.num_features = self.head_hidden_size = hidden

        if conv_layers < 0 or (conv_layers and conv_channels < 1):
            raise ValueError(f"need conv_layers >= 0 and conv_channels >= 1, got {conv_layers} and {conv_channels}")
        if min(h, w) >> conv_layers < 1:
            raise ValueError(f"{conv_layers} 2x2 max-pools leave nothing of a {h}x{w} input: use fewer conv_layers")
        layers: list[nn.Module] = []
        for i in range(conv_layers):
            layers += [nn.Conv2d(c if i == 0 else conv_channels, conv_channels, kernel_size, padding="same"),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.conv: nn.Module = nn.Sequential(*layers) if layers else nn.Identity()
        in_features = (conv_channels if conv_layers else c) * (h >> conv_layers) * (w >> conv_layers)
        # No bias: a bias here would pass linearly into the hidden layer's bias, so it adds nothing.
        self.bottleneck = nn.Linear(in_features, bottleneck, bias=False) if bottleneck else None
        self.hidden = nn.Linear(bottleneck or in_features, hidden)
        self.act = _ACTIVATIONS[activation]()
        self.fc: nn.Module = nn.Linear(hidden, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The wide hidden layer's activations. Flattening fixes the input size, so it is checked exactly."""
        x = _helpers.check_input(x, self.name, self.in_chans, exact_size=self.image_size)
        x = torch.flatten(self.conv(x), 1)
        if self.bottleneck is not None:
            x = self.bottleneck(x)
        return self.act(self.hidden(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.fc(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new linear head on the model's device and dtype; 0 removes it, so that forward returns the hidden
        activations. A flat net has no pooling: `global_pool` may only be None or "avg" (timm's default)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"{self.name} is a flat net with no pooling to change: global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.fc = _helpers.new_classifier(self, self.num_features, num_classes)


class ConvShallowMimicNet(ShallowMimicNet):
    """`conv_layers` (default one) conv layers (`conv_channels` filters, `kernel_size`, same padding) + ReLU +
    2x2 max-pool, then the shallow net: the paper's SNN-CNN student. Takes ShallowMimicNet's other arguments."""

    def __init__(self, *args: Any, conv_layers: int = 1, **kwargs: Any) -> None:
        if conv_layers < 1:
            raise ValueError(f"conv_layers must be >= 1, got {conv_layers}: use ShallowMimicNet for no conv")
        super().__init__(*args, conv_layers=conv_layers, **kwargs)


@register_model(cfg=FASHION_MNIST_CFG)
def mimic_snn_1k(**kwargs: Any) -> ShallowMimicNet:
    """Shallow student, 250-unit linear bottleneck, 1000 hidden units: 0.46 M parameters on 28x28."""
    return ShallowMimicNet(hidden=1000, **kwargs)


@register_model(cfg=FASHION_MNIST_CFG)
def mimic_snn_8k(**kwargs: Any) -> ShallowMimicNet:
    """Shallow student, 250-unit linear bottleneck, 8000 hidden units: 2.3 M parameters on 28x28."""
    return ShallowMimicNet(hidden=8000, **kwargs)


@register_model(cfg=FASHION_MNIST_CFG)
def mimic_snn_8k_nobottleneck(**kwargs: Any) -> ShallowMimicNet:
    """The plain shallow net at 8000 hidden units, for comparison: 6.4 M parameters on 28x28."""
    return ShallowMimicNet(hidden=8000, bottleneck=None, **kwargs)


@register_model(cfg=dict(FASHION_MNIST_CFG, first_conv="conv.0"))
def mimic_cnn_8k(**kwargs: Any) -> ConvShallowMimicNet:
    """Conv student: 128 5x5 filters and 2x2 max-pool, then the 250/8000 shallow net: 8.4 M parameters
    on 28x28."""
    return ConvShallowMimicNet(hidden=8000, **kwargs)
