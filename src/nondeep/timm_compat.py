"""nondeep's models in timm's registry, so that timm's API and scripts take them by name.

    import nondeep.timm_compat
    nondeep.timm_compat.register_with_timm()
    model = timm.create_model("parnet_s", num_classes=100)    # also timm.list_models("parnet*")

After the call `timm.create_model` builds every name of `nondeep.list_models()` through timm's own builder
(`build_model_with_cfg`), with a complete `pretrained_cfg` (input size, mean and std, crop, interpolation,
`first_conv`, `classifier`, `pool_size`, `fixed_input_size` for the flat mimic students), timm's `device=` /
`dtype=` arguments, and `features_only=True` through timm's `FeatureGetterNet` (the models'
`forward_intermediates` and `prune_intermediate_layers`). timm's scripts (train.py, validate.py, benchmark.py,
onnx_export.py) take a nondeep name when run through the runner, which registers and then runs the script:

    python -m nondeep.timm_compat path/to/timm/train.py DATA_DIR --model parnet_tiny ...

timm (1.0.31) has no plugin mechanism: its registry is filled only by importing its own modules, and it reads
no package entry points, so nothing can register on `import timm`; the call (or the runner) is needed.
nondeep ships no pretrained weights: `pretrained=True` is an error.
"""

from __future__ import annotations

import runpy
import sys
import warnings
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import NondeepError
from .models import _registry
from .models._registry import create_model, get_default_cfg, list_models

PAPERS = {"parnet": ("Non-deep Networks", "arXiv:2110.07641"),
          "wrn": ("Wide Residual Networks", "arXiv:1605.07146"),
          "wide_resnet": ("Wide Residual Networks", "arXiv:1605.07146"),
          "preact_resnet": ("Identity Mappings in Deep Residual Networks", "arXiv:1603.05027"),
          "resnet": ("Deep Residual Learning for Image Recognition", "arXiv:1512.03385"),
          "mimic": ("Do Deep Nets Really Need to be Deep?", "arXiv:1312.6184")}
# nondeep's config keys that timm's PretrainedCfg has too.
CFG_KEYS = ("input_size", "mean", "std", "num_classes", "interpolation", "crop_pct", "first_conv", "classifier",
            "pool_size", "fixed_input_size")

# timm's register_model reads the pretrained configs from the entry function's module: this one.
default_cfgs: dict[str, dict[str, Any]] = {}
__all__ = ["register_with_timm", "timm_pretrained_cfg", "default_cfgs"]
_registered: list[str] = []


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise NondeepError("registering nondeep's models with timm needs timm: pip install 'nondeep[timm]'") from err
    return timm


def _build(name: str, device: Any = None, dtype: torch.dtype | None = None, img_size: Any = None,
           need_features: bool = False, **kwargs: Any) -> nn.Module:
    """nondeep's builder with timm's factory arguments: `device`/`dtype` place every parameter and buffer,
    `img_size` (passed by timm for fixed-input models) is nondeep's `input_size`."""
    if img_size is not None:
        kwargs["input_size"] = tuple(img_size)
    with torch.device(device) if device is not None else nullcontext():
        model = create_model(name, **kwargs)
    if need_features and not hasattr(model, "forward_intermediates"):
        raise NondeepError(f"{name} has no feature levels (no feature_info / forward_intermediates): "
                           "features_only is for the ParNet and Wide ResNet families")
    return model if dtype is None else model.to(dtype=dtype)


def timm_pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained_cfg for a nondeep model: nondeep's registry config (which names the first conv and
    the unpooled map's size), a one-line description and the paper. Nothing is built."""
    cfg = get_default_cfg(name)
    out: dict[str, Any] = {k: tuple(cfg[k]) if isinstance(cfg.get(k), list) else cfg[k] for k in CFG_KEYS if k in cfg}
    out["license"] = "mit"
    out["description"] = " ".join((_registry._builders[name].__doc__ or "").split())
    family = next((f for f in sorted(PAPERS, key=len, reverse=True) if name.startswith(f)), None)
    if family is not None:
        out["paper_name"], out["paper_ids"] = PAPERS[family]
    return out


def _entry(name: str) -> Callable[..., nn.Module]:
    from timm.models import build_model_with_cfg

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise NondeepError(f"nondeep ships no pretrained weights for {name}: train one (timm's train.py or "
                               "`nondeep train`) and load it with --initial-checkpoint / checkpoint_path")
        # features_only goes through timm's FeatureGetterNet: the model's forward_intermediates and
        # prune_intermediate_layers; out_indices=None asks for every level.
        builder = partial(_build, name, need_features=bool(kwargs.get("features_only")))
        return build_model_with_cfg(builder, name, pretrained=False,
                                    feature_cfg=dict(feature_cls="getter", out_indices=None), **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = _registry._builders[name].__doc__
    return entry


def register_with_timm(names: list[str] | None = None) -> list[str]:
    """Register nondeep's models (default: every name of `nondeep.list_models()`) in timm's registry and
    return the names registered. A name timm already has for a model of its own is left to timm (with a
    warning). Calling again registers nothing twice."""
    timm = _import_timm()
    from timm.models import register_model

    module = sys.modules[__name__]
    done = []
    for name in names if names is not None else list_models():
        if name in _registered:
            done.append(name)
            continue
        if timm.is_model(name):
            warnings.warn(f"timm already has a model named {name!r}: nondeep's is not registered over it")
            continue
        default_cfgs[name] = timm_pretrained_cfg(name)
        fn = _entry(name)
        setattr(module, name, fn)
        register_model(fn)
        _registered.append(name)
        done.append(name)
    return done


def main(argv: list[str] | None = None) -> None:
    """`python -m nondeep.timm_compat SCRIPT.py [ARGS...]`: register, then run timm's script (train.py,
    validate.py, benchmark.py, onnx_export.py ...) as __main__ in this process, so it takes nondeep's names."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\nusage: python -m nondeep.timm_compat SCRIPT.py [ARGS...]")
        raise SystemExit(0 if argv else 2)
    register_with_timm()
    script = argv[0]
    sys.argv = argv
    sys.path.insert(0, str(Path(script).resolve().parent))  # as `python SCRIPT.py` would
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
