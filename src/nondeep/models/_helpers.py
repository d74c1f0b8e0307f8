"""Small pieces shared by the model families."""

from __future__ import annotations

import torch
import torch.fx

from ..errors import InputShapeError


def check_input(x: torch.Tensor, model_name: str, in_chans: int, divisor: int = 1,
                exact_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Raise a clear error for an input the model cannot take; return x unchanged.

    Wrapped for torch.fx (below), so tracing records one opaque call instead of failing on the shape tests.
    Call it as `_helpers.check_input(...)`: fx patches this module's global, not a copied name.
    """
    if x.dim() != 4:
        raise InputShapeError(f"{model_name} expects a 4-d batch (N, C, H, W), got shape {tuple(x.shape)}")
    _, c, h, w = x.shape
    if c != in_chans:
        raise InputShapeError(f"{model_name} expects {in_chans} input channel(s), got {c}: build it with "
                              f"in_chans={c} or convert the images")
    if exact_size is not None and (h, w) != tuple(exact_size):
        raise InputShapeError(f"{model_name} expects {exact_size[0]}x{exact_size[1]} images, got {h}x{w}: "
                              f"resize the input or build the model with input_size=({h}, {w})")
    if divisor > 1 and (h % divisor or w % divisor or h < divisor or w < divisor):
        raise InputShapeError(f"{model_name} expects height and width that are multiples of {divisor} "
                              f"(e.g. {divisor * 7}), got {h}x{w}: resize or pad the input")
    return x


torch.fx.wrap("check_input")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` equal groups (ShuffleNet)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
