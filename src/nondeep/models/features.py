"""Multi-scale features, the timm way: `feature_info` on each model, one `FeatureExtractor` for all families.

A model that supports feature extraction has
- `feature_info`: a list of dicts `num_chs`, `reduction` (the stride with respect to the input; non-decreasing)
  and `module` (the name of the module whose output the level is), one per level;
- `forward_intermediates(x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
  intermediates_only=False)`: the maps of the levels in `indices` (all of them by default; an int n means the
  last n), and unless `intermediates_only` the final unpooled map as well, as `(final, intermediates)`;
- optionally `prune_intermediate_layers(indices, prune_norm=False, prune_head=True)`: drop the classifier and
  every layer no requested level needs, so that a detector built on the features has no parameters without
  gradients (DDP would need `find_unused_parameters` otherwise).
The keywords are timm's: timm's FeatureGetterNet and model tests call them (nondeep.timm_compat, docs/timm.md).

`FeatureExtractor` wraps such a model; `create_model(name, features_only=True, out_indices=(...))` returns one.
Its forward gives the list of maps; `out_channels` (and `feature_info.channels()`) is the `in_channels_list` a
torchvision `FeaturePyramidNetwork` needs (nondeep.detection builds the FPN and detector on top of it).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..errors import NondeepError


def feature_take_indices(num_levels: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Normalise `indices` (None: all levels; an int n: the last n; a sequence: those, negatives counted from
    the end) to sorted non-negative indices, and return them with the largest one. ValueError when one is out
    of range, repeated or out of order (the maps must come in non-decreasing stride)."""
    if indices is None:
        take = list(range(num_levels))
    elif isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"out_indices={indices} asks for the last {indices} levels of {num_levels}")
        take = list(range(num_levels - indices, num_levels))
    else:
        take = [num_levels + i if i < 0 else i for i in indices]
        bad = [i for i, t in zip(indices, take) if not 0 <= t < num_levels]
        if bad or not take:
            raise ValueError(f"out_indices {tuple(indices)} out of range: this model has {num_levels} feature "
                             f"levels, 0..{num_levels - 1} (negative indices count from the end)")
        if any(b <= a for a, b in zip(take, take[1:])):
            raise ValueError(f"out_indices {tuple(indices)} must be increasing, so that the maps come in "
                             "non-decreasing stride")
    return take, max(take)


class FeatureInfo(list):
    """The selected levels' dicts (`num_chs`, `reduction`, `module`, `index`), with timm's accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


class FeatureExtractor(nn.Module):
    """A backbone that returns the list of feature maps at `out_indices` (default: every level).

    `prune=True` (the default) calls the model's `prune_intermediate_layers`: the classifier goes and, when
    the last requested level comes before the head, so do the layers after it; the wrapped model then serves
    features only. Build the model (and load its weights) first to start a backbone from a trained
    classifier: `FeatureExtractor(model, out_indices=(1, 2, 3))`.
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None, prune: bool = True) -> None:
        super().__init__()
        if not (hasattr(model, "feature_info") and hasattr(model, "forward_intermediates")):
            raise NondeepError(f"{type(model).__name__} has no feature_info / forward_intermediates: "
                               "features_only works for nondeep's ParNet and WideResNet families (and timm: "
                               "models, which timm extracts itself)")
        take, _ = feature_take_indices(len(model.feature_info), out_indices)
        if prune and hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(take)
        self.model = model
        self.out_indices = tuple(take)
        self.feature_info = FeatureInfo(dict(model.feature_info[i], index=i) for i in take)
        # torchvision's FPN takes these as in_channels_list; nondeep.detection's FPN backbone then has the
        # single int `out_channels` that torchvision's detectors read.
        self.out_channels: list[int] = self.feature_info.channels()
        self.pretrained_cfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices), stop_early=True,
                                                intermediates_only=True)
