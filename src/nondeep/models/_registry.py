"""A model registry in the style of timm: builder functions registered by name, and `create_model`.

Builders are plain functions `name(**kwargs) -> nn.Module`. Each carries a default config (input size,
normalisation, classifier name) that `create_model` attaches to the model as `model.pretrained_cfg`, so the
data pipeline reads it and the user never repeats it. Parameterised families (any `wrn_<n>_<k>`) register a
name pattern as well as their common names.

Other people's models go through the same call: `create_model("torchvision:resnet50", num_classes=10)` builds
`torchvision.models.get_model(...)` and `create_model("timm:NAME", ...)` builds `timm.create_model(...)` (timm
is optional), each with a config, so `nondeep info`, `nondeep.measure` and `nondeep export` take them too.
`list_models` lists nondeep's own names only; `is_model` understands the prefixes.

`create_model(name, features_only=True, out_indices=(...))` returns a `FeatureExtractor` (models/features.py)
whose forward gives the list of feature maps.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from typing import Any, Callable, Sequence

from torch import nn

from ..errors import NondeepError, UnknownModelError

Builder = Callable[..., nn.Module]

_builders: dict[str, Builder] = {}
_default_cfgs: dict[str, dict[str, Any]] = {}
_lazy: dict[str, str] = {}  # name -> the module whose import registers it (register_lazy)
_patterns: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[Builder, dict[str, Any]]], dict[str, Any]]] = []


def default_cfg(
    input_size: tuple[int, int, int] = (3, 224, 224),
    mean: tuple[float, ...] = (0.485, 0.456, 0.406),
    std: tuple[float, ...] = (0.229, 0.224, 0.225),
    num_classes: int = 1000,
    **extra: Any,
) -> dict[str, Any]:
    """A timm-like per-model config; `first_conv` and `classifier` name the modules to adapt (`create_model`
    fills `first_conv` from the built model: the first conv, None for a net without one)."""
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
        _lazy.pop(name, None)
        _builders[name] = builder
        _default_cfgs[name] = dict(cfg or default_cfg())
        return builder

    return wrap(fn) if fn is not None else wrap


def register_model_pattern(pattern: str, resolve: Callable[[re.Match[str]], tuple[Builder, dict[str, Any]]],
                           cfg: dict[str, Any] | None = None) -> None:
    """Register names such as `wrn_<n>_<k>`: `resolve(match)` returns (builder, kwargs for it)."""
    _patterns.append((re.compile(pattern), resolve, dict(cfg or default_cfg())))


def register_lazy(module: str, names: Sequence[str]) -> None:
    """`names` are registered by importing `module`, which happens when one of them is first resolved: a family
    whose module needs a slow import (torchvision and the torch._dynamo it loads, ~2.5 s) then costs nothing
    to `import nondeep` and to every command that does not build it."""
    for name in names:
        _lazy[name] = module


def list_models(filter: str = "") -> list[str]:
    """Registered names, sorted; `filter` takes shell wildcards (`"parnet_*"`)."""
    names = sorted({*_builders, *_lazy})
    return [n for n in names if fnmatch.fnmatch(n, filter)] if filter else names


# ---- other libraries' models: "torchvision:NAME" and "timm:NAME" --------------------------------------------

EXTERNAL_PREFIXES = ("torchvision:", "timm:")


def _first_and_last(model: nn.Module) -> tuple[str | None, str | None]:
    """Names of the first conv and the last linear layer: the config's `first_conv` and `classifier`."""
    first = next((n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return first, (linears[-1] if linears else None)


def _torchvision_cfg(name: str, model: nn.Module | None = None) -> dict[str, Any]:
    """ImageNet config; the eval crop and resize of torchvision's default weights where they are recorded
    (their metadata is local: nothing is downloaded), unless the model fixes its own `image_size` (ViT)."""
    cfg = default_cfg()
    try:
        import torchvision.models as tvm

        keywords = getattr(tvm.get_model_weights(name).DEFAULT.transforms, "keywords", {})
    except Exception:  # models without weights or transforms of another kind: the ImageNet default
        keywords = {}
    crop = keywords.get("crop_size")
    if isinstance(crop, (list, tuple)):
        crop = crop[0]
    size = getattr(model, "image_size", None) if model is not None else None
    if isinstance(size, int):
        crop = size
    if isinstance(crop, int):
        cfg["input_size"] = (3, crop, crop)
        resize = keywords.get("resize_size")
        resize = resize[0] if isinstance(resize, (list, tuple)) else resize
        if isinstance(resize, int) and resize >= crop:
            cfg["crop_pct"] = round(crop / resize, 4)
    interpolation = keywords.get("interpolation")
    if interpolation is not None:
        cfg["interpolation"] = getattr(interpolation, "value", str(interpolation))
    return cfg


def _build_torchvision(name: str, pretrained: bool = False, in_chans: int | None = None,
                       input_size: Any = None, **kwargs: Any) -> nn.Module:
    import torchvision.models as tvm

    if in_chans not in (None, 3):
        raise NondeepError(f"torchvision:{name} takes 3-channel images only (got in_chans={in_chans}); use a "
                           "nondeep or timm: model for other channel counts")
    try:
        # weights=None builds offline; pretrained=True asks torchvision for its default weights (a download).
        model = tvm.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except TypeError as err:
        raise NondeepError(f"torchvision:{name} does not take {sorted(kwargs)}: {err}") from err
    cfg = _torchvision_cfg(name, model)
    cfg["classifier"] = _first_and_last(model)[1]  # create_model fills first_conv and num_classes
    model.pretrained_cfg = cfg
    return model


def _import_timm(name: str) -> Any:
    try:
        import timm
    except ImportError as err:
        raise NondeepError(f"timm:{name} needs timm, which is not installed: pip install timm") from err
    return timm


def _build_timm(name: str, pretrained: bool = False, input_size: Any = None, **kwargs: Any) -> nn.Module:
    model = _import_timm(name).create_model(name, pretrained=pretrained, **kwargs)
    cfg = default_cfg()
    theirs = getattr(model, "pretrained_cfg", None) or {}
    cfg.update({k: theirs[k] for k in cfg if theirs.get(k) is not None})
    cfg["num_classes"] = getattr(model, "num_classes", cfg["num_classes"])
    cfg["input_size"] = tuple(cfg["input_size"])
    model.pretrained_cfg = cfg
    return model


def _resolve_external(name: str) -> tuple[Builder, dict[str, Any], dict[str, Any]]:
    prefix, _, bare = name.partition(":")
    if prefix == "torchvision":
        import torchvision.models as tvm

        known = tvm.list_models()
        if bare not in known:
            close = difflib.get_close_matches(bare, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join('torchvision:' + c for c in close)}?" if close else ""
            raise UnknownModelError(f"unknown torchvision model {bare!r}{hint} (torchvision.models.list_models() "
                                    "lists them)")
        return _build_torchvision, {"name": bare}, _torchvision_cfg(bare)
    timm = _import_timm(bare)
    if not timm.is_model(bare):
        close = difflib.get_close_matches(bare, timm.list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown timm model {bare!r}{hint} (timm.list_models() lists them)")
    return _build_timm, {"name": bare}, default_cfg()


def _resolve(name: str) -> tuple[Builder, dict[str, Any], dict[str, Any]]:
    if name.startswith(EXTERNAL_PREFIXES):
        return _resolve_external(name)
    if name in _lazy:
        module = _lazy[name]
        importlib.import_module(module)
        if name not in _builders:
            raise RuntimeError(f"{module} was to register {name!r} and did not")
    if name in _builders:
        return _builders[name], {}, _default_cfgs[name]
    for pattern, resolve, cfg in _patterns:
        match = pattern.fullmatch(name)
        if match:
            builder, kwargs = resolve(match)
            return builder, kwargs, cfg
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (`nondeep models` lists them all)")


def is_model(name: str) -> bool:
    """True for a registered name or pattern, and for "torchvision:NAME" / "timm:NAME" that the library has
    (False for timm: names when timm is not installed)."""
    try:
        _resolve(name)
    except (UnknownModelError, NondeepError):
        return False
    return True


def get_default_cfg(name: str) -> dict[str, Any]:
    return dict(_resolve(name)[2])


def create_model(name: str, pretrained: bool = False, features_only: bool = False,
                 out_indices: int | tuple[int, ...] | list[int] | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model, or "torchvision:NAME" / "timm:NAME". Keyword arguments passed as None are
    dropped (timm's habit), so one call works across families that lack an option. `in_chans` and
    `num_classes` update the attached config.

    `features_only=True` returns a `FeatureExtractor` whose forward gives the list of maps of the levels in
    `out_indices` (default all; see the model's `feature_info`), with `out_channels` for an FPN. For timm:
    models both go to timm, which extracts features itself.
    """
    external = name.startswith(EXTERNAL_PREFIXES)
    if pretrained and not external:
        raise ValueError("nondeep ships no pretrained weights: train one with `nondeep train` and load it "
                         "with nondeep.checkpoint.load_model")
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects feature levels: pass features_only=True as well")
    builder, pattern_kwargs, cfg = _resolve(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if external:
        pattern_kwargs = dict(pattern_kwargs, pretrained=pretrained)
        if features_only and name.startswith("timm:"):
            pattern_kwargs.update(features_only=True, **({} if out_indices is None else {"out_indices": out_indices}))
            features_only = False
        elif features_only:
            raise NondeepError(f"features_only is not available for {name}: use "
                               "torchvision.models.feature_extraction.create_feature_extractor on it")
    model = builder(**pattern_kwargs, **kwargs)
    # A builder whose arguments change the input (e.g. small_image=True) attaches its own config.
    cfg = dict(getattr(model, "pretrained_cfg", None) or cfg, architecture=name)
    if cfg.get("first_conv") is None:  # the module whose weights an in_chans change adapts (None: no conv)
        cfg["first_conv"] = _first_and_last(model)[0]
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
    if features_only:
        from .features import FeatureExtractor

        model = FeatureExtractor(model, out_indices)
        model.pretrained_cfg = cfg
    return model
