"""A model registry in the style of timm: builder functions registered by name, and `create_model`.

Builders are plain functions `name(**kwargs) -> nn.Module`. Each carries a default config (input size,
normalisation, classifier name) that `create_model` attaches to the model as `model.pretrained_cfg`, so the
data pipeline reads it and the user never repeats it. Parameterised families (any `wrn_<n>_<k>`) register a
name pattern as well as their common names.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Any, Callable

from torch import nn

from ..errors import UnknownModelError

Builder = Callable[..., nn.Module]

_builders: dict[str, Builder] = {}
_default_cfgs: dict[str, dict[str, Any]] = {}
_patterns: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[Builder, dict[str, Any]]], dict[str, Any]]] = []


def default_cfg(
    input_size: tuple[int, int, int] = (3, 224, 224),
    mean: tuple[float, ...] = (0.485, 0.456, 0.406),
    std: tuple[float, ...] = (0.229, 0.224, 0.225),
    num_classes: int = 1000,
    **extra: Any,
) -> dict[str, Any]:
    """A timm-like per-model config; `first_conv` and `classifier` name the modules to adapt."""
    cfg = dict(input_size=input_size, mean=mean, std=std, num_classes=num_classes,
               interpolation="bilinear", crop_pct=0.875, first_conv=None, classifier="fc")
    cfg.update(extra)
    return cfg


CIFAR_CFG = default_cfg(input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                        num_classes=10, crop_pct=1.0)


def register_model(fn: Builder | None = None, *, cfg: dict[str, Any] | None = None):
    """Decorator: `@register_model` or `@register_model(cfg=default_cfg(...))`."""

    def wrap(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _builders:
            raise ValueError(f"model {name!r} is registered twice")
        _builders[name] = builder
        _default_cfgs[name] = dict(cfg or default_cfg())
        return builder

    return wrap(fn) if fn is not None else wrap


def register_model_pattern(pattern: str, resolve: Callable[[re.Match[str]], tuple[Builder, dict[str, Any]]],
                           cfg: dict[str, Any] | None = None) -> None:
    """Register names such as `wrn_<n>_<k>`: `resolve(match)` returns (builder, kwargs for it)."""
    _patterns.append((re.compile(pattern), resolve, dict(cfg or default_cfg())))


def list_models(filter: str = "") -> list[str]:
    """Registered names, sorted; `filter` takes shell wildcards (`"parnet_*"`)."""
    names = sorted(_builders)
    return [n for n in names if fnmatch.fnmatch(n, filter)] if filter else names


def _resolve(name: str) -> tuple[Builder, dict[str, Any], dict[str, Any]]:
    if name in _builders:
        return _builders[name], {}, _default_cfgs[name]
    for pattern, resolve, cfg in _patterns:
        match = pattern.fullmatch(name)
        if match:
            builder, kwargs = resolve(match)
            return builder, kwargs, cfg
    close = difflib.get_close_matches(name, list(_builders), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (`nondeep models` lists them all)")


def is_model(name: str) -> bool:
    try:
        _resolve(name)
    except UnknownModelError:
        return False
    return True


def get_default_cfg(name: str) -> dict[str, Any]:
    return dict(_resolve(name)[2])


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model. Keyword arguments passed as None are dropped (timm's habit), so one call
    works across families that lack an option. `in_chans` and `num_classes` update the attached config."""
    if pretrained:
        raise ValueError("nondeep ships no pretrained weights: train one with `nondeep train` and load it "
                         "with nondeep.train.load_checkpoint")
    builder, pattern_kwargs, cfg = _resolve(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = builder(**pattern_kwargs, **kwargs)
    # A builder whose arguments change the input (e.g. small_image=True) attaches its own config.
    cfg = dict(getattr(model, "pretrained_cfg", None) or cfg, architecture=name)
    if "in_chans" in kwargs:
        in_chans = kwargs["in_chans"]
        cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
        if len(cfg["mean"]) != in_chans:  # grey images: one mean/std, the average of the colour ones
            cfg["mean"] = (sum(cfg["mean"]) / len(cfg["mean"]),) * in_chans
            cfg["std"] = (sum(cfg["std"]) / len(cfg["std"]),) * in_chans
    if "input_size" in kwargs:  # (C, H, W) or (H, W)
        cfg["input_size"] = (*cfg["input_size"][: 3 - len(kwargs["input_size"])], *kwargs["input_size"])
    if "num_classes" in kwargs:
        cfg["num_classes"] = kwargs["num_classes"]
    model.pretrained_cfg = cfg
    return model
