"""The model registry (nondeep.models._registry) as units: configs, registration, name resolution with its
hints, and what create_model does to the config it attaches (channels, input size, classes, first conv,
features). The external prefixes (torchvision:, timm:) are tests/test_external_models.py."""

from __future__ import annotations

import pytest
from torch import nn

from nondeep.errors import UnknownModelError
from nondeep.models import _registry
from nondeep.models._registry import (CIFAR_CFG, create_model, default_cfg, get_default_cfg, is_model,
                                      list_models, register_lazy, register_model, register_model_pattern)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry: what a test registers is gone after it."""
    for name in ("_builders", "_default_cfgs", "_lazy"):
        monkeypatch.setattr(_registry, name, dict(getattr(_registry, name)))
    monkeypatch.setattr(_registry, "_patterns", list(_registry._patterns))


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 4, in_chans: int = 3, width: int = 2, **kwargs) -> None:
        super().__init__()
        self.kwargs, self.num_classes = kwargs, num_classes
        self.body = nn.Sequential(nn.Identity(), nn.Conv2d(in_chans, width, 1))
        self.head = nn.Linear(width, num_classes)
        self.fc = nn.Linear(width, num_classes)


def test_default_and_cifar_configs():
    assert default_cfg() == dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                 num_classes=1000, interpolation="bilinear", crop_pct=0.875, first_conv=None,
                                 classifier="fc")
    assert default_cfg(num_classes=5, classifier="head", pool_size=(7, 7))["pool_size"] == (7, 7)
    assert CIFAR_CFG == dict(default_cfg(), input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465),
                             std=(0.2470, 0.2435, 0.2616), num_classes=10, crop_pct=1.0)


def test_a_builder_is_registered_once_with_a_copy_of_its_config(registry):
    cfg = default_cfg(num_classes=4)

    @register_model(cfg=cfg)
    def tiny_a(**kwargs):
        return Tiny(**kwargs)

    @register_model
    def tiny_b(**kwargs):
        return Tiny(**kwargs)

    cfg["num_classes"] = 99  # the registry kept its own copy
    assert get_default_cfg("tiny_a")["num_classes"] == 4 and get_default_cfg("tiny_b") == default_cfg()
    get_default_cfg("tiny_a")["num_classes"] = 7  # and hands out copies
    assert get_default_cfg("tiny_a")["num_classes"] == 4
    assert "tiny_a" in list_models() and is_model("tiny_b")
    with pytest.raises(ValueError) as err:
        register_model(tiny_a)
    assert str(err.value) == "model 'tiny_a' is registered twice"


def test_a_lazy_name_is_listed_and_its_registration_replaces_it(registry):
    register_lazy("nondeep.models.mimic", ["lazy_one"])
    assert "lazy_one" in list_models() and list_models("lazy_*") == ["lazy_one"]

    @register_model
    def lazy_one(**kwargs):
        return Tiny(**kwargs)

    assert "lazy_one" not in _registry._lazy and list_models().count("lazy_one") == 1


def test_resolving_a_lazy_name_imports_its_module_once(registry, tmp_path, monkeypatch):
    (tmp_path / "lazy_family.py").write_text(
        "from torch import nn\nfrom nondeep.models._registry import register_model\n\n"
        "@register_model\ndef lazy_net(**kwargs):\n    return nn.Linear(2, 2)\n")
    (tmp_path / "broken_family.py").write_text("")  # registers nothing
    monkeypatch.syspath_prepend(str(tmp_path))
    register_lazy("lazy_family", ["lazy_net"])
    register_lazy("broken_family", ["ghost_net"])
    assert _registry._lazy["lazy_net"] == "lazy_family" and "lazy_net" not in _registry._builders
    assert isinstance(create_model("lazy_net"), nn.Linear) and "lazy_net" in _registry._builders
    with pytest.raises(RuntimeError) as err:
        create_model("ghost_net")
    assert str(err.value) == "broken_family was to register 'ghost_net' and did not"


def test_list_models_is_sorted_and_filtered_by_wildcards():
    names = list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert list_models("wrn_16_?") == ["wrn_16_1", "wrn_16_4", "wrn_16_8"]
    assert list_models("") == names and list_models("no_such_*") == []


def test_a_pattern_resolves_names_with_its_arguments(registry):
    register_model_pattern(r"tiny_w(\d+)", lambda m: (Tiny, {"width": int(m[1])}), cfg=default_cfg(num_classes=4))
    model = create_model("tiny_w5")
    assert model.body[1].out_channels == 5 and model.pretrained_cfg["architecture"] == "tiny_w5"
    assert get_default_cfg("tiny_w3")["num_classes"] == 4 and is_model("tiny_w7") and not is_model("tiny_wx")
    assert not is_model("xtiny_w5") and not is_model("tiny_w5x")  # the whole name must match


def test_an_unknown_name_suggests_close_ones_or_none():
    with pytest.raises(UnknownModelError) as err:
        create_model("wrn_16_")
    assert str(err.value).startswith("unknown model 'wrn_16_'; did you mean ")
    assert str(err.value).endswith("? (`nondeep models` lists them all)")
    with pytest.raises(UnknownModelError) as err:
        create_model("zzzzzzzz")
    assert str(err.value) == "unknown model 'zzzzzzzz' (`nondeep models` lists them all)"


def test_create_model_refuses_pretrained_and_stray_out_indices():
    with pytest.raises(ValueError) as err:
        create_model("wrn_16_1", pretrained=True)
    assert str(err.value) == ("nondeep ships no pretrained weights: train one with `nondeep train` and load it with "
                              "nondeep.checkpoint.load_model")
    with pytest.raises(ValueError) as err:
        create_model("wrn_16_1", out_indices=(1,))
    assert str(err.value) == "out_indices selects feature levels: pass features_only=True as well"


def test_the_attached_config_follows_channels_size_and_classes(registry):
    @register_model(cfg=default_cfg(num_classes=4))
    def tiny(**kwargs):
        return Tiny(**kwargs)

    plain = create_model("tiny")
    assert plain.pretrained_cfg == dict(default_cfg(num_classes=4), architecture="tiny", first_conv="body.1")
    grey = create_model("tiny", in_chans=1, num_classes=3, width=None)  # None: dropped, the builder's default
    assert grey.body[1].out_channels == 2 and grey.kwargs == {}
    cfg = grey.pretrained_cfg
    assert cfg["input_size"] == (1, 224, 224) and cfg["num_classes"] == 3
    assert cfg["mean"] == pytest.approx((0.449,)) and cfg["std"] == pytest.approx((0.226,))
    four = create_model("tiny", in_chans=4).pretrained_cfg  # other channel counts: the average, repeated
    assert four["mean"] == pytest.approx((0.449,) * 4) and four["input_size"][0] == 4
    assert create_model("tiny", in_chans=3).pretrained_cfg["mean"] == (0.485, 0.456, 0.406)  # as it was
    assert create_model("tiny", input_size=(64, 48)).pretrained_cfg["input_size"] == (3, 64, 48)
    assert create_model("tiny", input_size=(1, 64, 48)).pretrained_cfg["input_size"] == (1, 64, 48)


def test_a_builders_own_config_and_first_conv_are_kept(registry):
    class Own(Tiny):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.pretrained_cfg = default_cfg(num_classes=8, first_conv="mine")

    @register_model
    def own(**kwargs):
        return Own(**kwargs)

    cfg = create_model("own").pretrained_cfg
    assert cfg["num_classes"] == 8 and cfg["first_conv"] == "mine" and cfg["architecture"] == "own"


def test_first_and_last_find_the_first_conv_and_the_last_linear():
    assert _registry._first_and_last(Tiny()) == ("body.1", "fc")
    assert _registry._first_and_last(nn.Sequential(nn.ReLU())) == (None, None)


def test_features_only_wraps_the_model_with_its_config():
    features = create_model("wrn_16_1", features_only=True, out_indices=(1,), in_chans=1)
    assert type(features).__name__ == "FeatureExtractor" and features.out_indices == (1,)
    cfg = features.pretrained_cfg
    assert cfg["input_size"] == (1, 32, 32) and cfg["architecture"] == "wrn_16_1"


def test_an_unknown_name_suggests_up_to_3_registered_names_half_alike(monkeypatch):
    monkeypatch.setattr(_registry, "list_models", lambda: ["netaa", "netab", "netac", "netad", "abcdefgh"])
    # three of the four equally close names, in difflib's order; "abcdwxyz" is exactly half alike
    for asked, hint in [("neta", "; did you mean netad, netac, netab?"), ("abcdwxyz", "; did you mean abcdefgh?"),
                        ("zzzzzzzz", "")]:
        with pytest.raises(UnknownModelError) as err:
            create_model(asked)
        assert str(err.value) == f"unknown model {asked!r}{hint} (`nondeep models` lists them all)"
