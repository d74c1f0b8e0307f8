"""Small pieces shared by the model families."""

# No `from __future__ import annotations` here: torch.fx copies ClassifierHead.forward's annotations into the
# code it traces, which TorchScript must then read (timm's fx + script test of the small-image ResNet).
from typing import List, Optional

import torch
import torch.fx
from torch import nn

from ..errors import InputShapeError


def check_input(x: torch.Tensor, model_name: str, in_chans: int, divisor: int = 1,
                exact_size: Optional[List[int]] = None) -> torch.Tensor:
    """Raise a clear error for an input the model cannot take; return x unchanged.

    Wrapped for torch.fx (below), so tracing records one opaque call instead of failing on the shape tests.
    Call it as `_helpers.check_input(...)`: fx patches this module's global, not a copied name. Written for
    TorchScript too (str.format, no f-strings; typing.List/Optional): a scripted model, or a scripted fx
    graph that calls it, compiles this function.
    """
    if x.dim() != 4:
        raise InputShapeError("{} expects a 4-d batch (N, C, H, W), got shape {}".format(model_name, list(x.shape)))
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    if c != in_chans:
        raise InputShapeError("{} expects {} input channel(s), got {}: build it with in_chans={} or convert the "
                              "images".format(model_name, in_chans, c, c))
    if exact_size is not None and (h != exact_size[0] or w != exact_size[1]):
        raise InputShapeError("{} expects {}x{} images, got {}x{}: resize the input or build the model with "
                              "input_size=({}, {})".format(model_name, exact_size[0], exact_size[1], h, w, h, w))
    if divisor > 1 and (h % divisor != 0 or w % divisor != 0 or h < divisor or w < divisor):
        raise InputShapeError("{} expects height and width that are multiples of {} (e.g. {}), got {}x{}: resize "
                              "or pad the input".format(model_name, divisor, divisor * 7, h, w))
    return x


torch.fx.wrap("check_input")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` equal groups (ShuffleNet)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ---- the classifier head, shared by every family (timm's contract) -----------------------------------------

GLOBAL_POOLS = ("avg", "")


def check_global_pool(global_pool: Optional[str], num_classes: int, current: str = "avg") -> str:
    """The pooling for a head of `num_classes`: `global_pool`, or for None the `current` one, except that a
    linear head brings average pooling back (it takes pooled features). ValueError unless "avg" or ""
    (no pooling), or for "" asked for together with a linear head."""
    if global_pool is None:
        global_pool = "avg" if num_classes > 0 else current
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise ValueError("global_pool='' (no pooling) needs num_classes=0: the linear head takes pooled features")
    return global_pool


def new_classifier(model: nn.Module, num_features: int, num_classes: int) -> nn.Module:
    """A linear head (an Identity for num_classes=0) on the device and in the dtype of the model's other
    parameters, in the model's train/eval mode: resetting the head of a GPU or float64 model keeps it one."""
    if num_classes <= 0:
        return nn.Identity()
    reference = next((p for n, p in model.named_parameters() if not n.startswith("fc.")), None)
    kwargs = {} if reference is None else dict(device=reference.device, dtype=reference.dtype)
    head = nn.Linear(num_features, num_classes, **kwargs)
    return head.train(model.training)


class ClassifierHead:
    """timm's classifier contract for a family with `forward_features`, `forward_head` and a head `fc` over
    `num_features` pooled features: forward, get_classifier, reset_classifier. List it before nn.Module (or
    torchvision's ResNet) among the bases, so that its `forward` is the one called."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new linear head on the model's device and dtype; 0 removes it, so that forward returns the pooled
        features, or with `global_pool=''` the unpooled map (None keeps the current pooling; a linear head
        brings average pooling back)."""
        self.global_pool = check_global_pool(global_pool, num_classes, current=self.global_pool)
        self.num_classes = num_classes
        self.fc = new_classifier(self, self.num_features, num_classes)
