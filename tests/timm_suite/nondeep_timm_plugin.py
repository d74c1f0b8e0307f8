"""pytest plugin (the registration conftest) that runs timm's own model tests against nondeep's models.

tests/test_timm_suite.py runs timm's tests/test_models.py, from the source distribution of the installed timm
(scripts/setup.sh downloads and unpacks it into .third_party/), with `-p nondeep_timm_plugin`. The test code
stays timm's. This plugin
- registers nondeep's models in timm's registry (nondeep.timm_compat.register_with_timm);
- narrows the model lists timm's tests are parametrised with (timm.list_models) to the models in
  NONDEEP_TIMM_MODELS (a comma-separated list; default: one model of each nondeep family), so that no timm
  model runs; timm selects its forward_intermediates tests by a hard-coded list of timm module names, to
  which nondeep's module (timm_compat) is added;
- deselects every test item that is not about one of those models (tests written for named timm models);
- skips, with the reason, the (test, model) pairs in NOT_CLAIMED: contract parts a model does not claim.
docs/timm.md lists the same pairs.
"""

from __future__ import annotations

import fnmatch
import os

import pytest
import timm

from nondeep.timm_compat import register_with_timm, timm_pretrained_cfg

DEFAULT_MODELS = "parnet_tiny,parnet_s_quarter,wrn_16_1,preact_resnet_20,mimic_cnn_8k,resnet18_small_image"
MODELS = [m for m in os.environ.get("NONDEEP_TIMM_MODELS", DEFAULT_MODELS).split(",") if m]

_FLAT = ("mimic_* is a flat net (one wide hidden layer): forward_features gives (N, hidden) activations, with no "
         "spatial map, pooling or feature levels")
_NO_LEVELS = "resnet*_small_image has no feature levels (no feature_info / forward_intermediates)"
# (test function glob, model glob) -> why the model does not claim that part of timm's contract.
NOT_CLAIMED: dict[tuple[str, str], str] = {
    ("test_model_default_cfgs", "mimic_*"): _FLAT + " (timm checks the unpooled map against pool_size and "
                                                    "builds with global_pool='')",
    ("test_model_forward_features", "mimic_*"): _FLAT,
    ("test_model_forward_intermediates*", "mimic_*"): _FLAT,
    ("test_prune_intermediate_layers_contract", "mimic_*"): _FLAT,
    ("test_model_forward_features", "resnet*_small_image"): _NO_LEVELS,
    ("test_model_forward_intermediates*", "resnet*_small_image"): _NO_LEVELS,
    ("test_prune_intermediate_layers_contract", "resnet*_small_image"): _NO_LEVELS,
}

register_with_timm()


def parnet_s_quarter(pretrained: bool = False, **kwargs):
    """ParNet-S's ImageNet form (stride-2 stem, levels at 1/4 to 1/32, its 224x224 config) at a quarter of
    its width: the ImageNet-form ParNet of the suite, as parnet_s itself takes minutes on 2 cores."""
    return timm.create_model("parnet_s", pretrained=pretrained, width_multiplier=0.25, **kwargs)


default_cfgs = {"parnet_s_quarter": timm_pretrained_cfg("parnet_s")}  # read by timm's register_model
timm.models.register_model(parnet_s_quarter)
_timm_list_models = timm.list_models


def _nondeep_list_models(filter="", module="", *args, **kwargs):  # noqa: A002 (timm's argument name)
    if module and not isinstance(module, str):  # timm's FEAT_INTER_FILTERS: the families with intermediates
        module = [*module, "timm_compat", __name__]
    return [n for n in _timm_list_models(filter, module, *args, **kwargs) if n in MODELS]


timm.list_models = _nondeep_list_models  # test_models.py does `from timm import list_models` after this


def not_claimed(test_name: str, model_name: str) -> str | None:
    return next((why for (test, model), why in NOT_CLAIMED.items()
                 if fnmatch.fnmatch(test_name, test) and fnmatch.fnmatch(model_name, model)), None)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        model_name = params.get("model_name")
        if model_name not in MODELS:
            drop.append(item)
            continue
        why = not_claimed(item.originalname, model_name)
        if why:
            item.add_marker(pytest.mark.skip(reason=f"not claimed: {why}"))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
