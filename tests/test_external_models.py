"""Other people's models through nondeep's registry: "torchvision:NAME" and "timm:NAME"."""

import sys
import types

import pytest
import torch
from torch import nn

import nondeep
from nondeep import NondeepError, UnknownModelError, create_model, list_models, measure


@pytest.mark.parametrize("name,expected", [("torchvision:resnet18", 18), ("torchvision:resnet50", 50)])
def test_torchvision_prefix_depth(name, expected):
    with torch.device("meta"):
        model = create_model(name)
    assert measure.depth(model) == expected
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["architecture"] == name and cfg["num_classes"] == 1000
    assert cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc"


def test_torchvision_model_builds_with_num_classes_and_info_works():
    from nondeep.cli.models import model_summary

    model = create_model("torchvision:resnet18", num_classes=10).eval()
    assert model.pretrained_cfg["num_classes"] == 10
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    row = model_summary("torchvision:resnet50")
    assert row["depth"] == 50 and row["input_size"] == "3x224x224" and 25 < row["params_m"] < 26


def test_prefix_names_unknown_names_and_listing():
    assert nondeep.is_model("torchvision:resnet50") and not nondeep.is_model("torchvision:resnet5O")
    assert not any(":" in n for n in list_models())
    with pytest.raises(UnknownModelError, match="did you mean torchvision:resnet50"):
        create_model("torchvision:resnet5O")
    with pytest.raises(NondeepError, match="3-channel"):
        create_model("torchvision:resnet18", in_chans=1)
    with pytest.raises(NondeepError, match="features_only"):
        create_model("torchvision:resnet18", features_only=True)
    assert nondeep.get_default_cfg("torchvision:inception_v3")["input_size"] == (3, 299, 299)


def test_timm_prefix_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(NondeepError, match="pip install timm"):
        create_model("timm:resnet50")
    assert not nondeep.is_model("timm:resnet50")


def test_timm_prefix_calls_timm(monkeypatch):
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        model = nn.Sequential(nn.Conv2d(kwargs.get("in_chans", 3), 4, 3), nn.Flatten(), nn.LazyLinear(5))
        model.pretrained_cfg = {"input_size": [3, 256, 256], "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                "crop_pct": 0.95, "classifier": "2"}
        model.num_classes = kwargs.get("num_classes", 1000)
        return model

    fake = types.SimpleNamespace(create_model=fake_create_model, is_model=lambda n: n == "fakenet",
                                 list_models=lambda: ["fakenet"])
    monkeypatch.setitem(sys.modules, "timm", fake)
    model = create_model("timm:fakenet", num_classes=5, drop_rate=None)
    assert calls == [("fakenet", False, {"num_classes": 5})]
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 256, 256) and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["num_classes"] == 5
    create_model("timm:fakenet", features_only=True, out_indices=(1, 2))
    assert calls[-1] == ("fakenet", False, {"features_only": True, "out_indices": (1, 2)})
    with pytest.raises(UnknownModelError, match="did you mean timm:fakenet"):
        create_model("timm:fakenet2")


def test_a_real_timm_model_gets_its_own_config_and_class_count():
    timm = pytest.importorskip("timm")  # an optional dependency of nondeep (the dev extra installs it)
    theirs = timm.create_model("resnet18").pretrained_cfg
    model = create_model("timm:resnet18")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == tuple(theirs["input_size"]) and isinstance(cfg["input_size"], tuple)
    assert (cfg["mean"], cfg["std"], cfg["crop_pct"]) == (theirs["mean"], theirs["std"], theirs["crop_pct"])
    assert cfg["num_classes"] == 1000 and cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc"
    small = create_model("timm:resnet18", num_classes=7, in_chans=1).eval()
    assert small.pretrained_cfg["num_classes"] == 7 and small.pretrained_cfg["input_size"] == (1, 224, 224)
    with torch.no_grad():
        assert small(torch.randn(1, 1, 32, 32)).shape == (1, 7)


def test_timm_models_class_count_and_config_come_from_the_model(monkeypatch):
    """The config's class count is the built model's own (a timm default head need not have 1000); a model
    without a pretrained_cfg or num_classes gets nondeep's defaults; pretrained reaches timm."""
    calls = []

    def fake_create_model(name, **kwargs):
        calls.append(kwargs)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(11))
        if name == "headnet":
            model.num_classes = 11  # its own head; no pretrained_cfg
        return model

    fake = types.SimpleNamespace(create_model=fake_create_model, is_model=lambda n: n in ("headnet", "barenet"),
                                 list_models=lambda: ["headnet", "barenet"])
    monkeypatch.setitem(sys.modules, "timm", fake)
    headnet = create_model("timm:headnet").pretrained_cfg
    assert headnet["num_classes"] == 11 and headnet["input_size"] == (3, 224, 224) and headnet["crop_pct"] == 0.875
    assert create_model("timm:barenet").pretrained_cfg["num_classes"] == 1000
    create_model("timm:barenet", pretrained=True)
    assert [c["pretrained"] for c in calls] == [False, False, True]


def test_torchvision_config_reads_the_weights_transforms_or_falls_back(monkeypatch):
    """crop, resize and interpolation come from the default weights' transforms when they record them (a
    one-element crop list too); a model that fixes its own image_size (ViT) wins; without either, ImageNet's
    default config."""
    import functools

    import torchvision.models as tvm
    from torchvision.transforms import InterpolationMode

    from nondeep.models._registry import _torchvision_cfg, default_cfg

    with torch.device("meta"):
        vit = create_model("torchvision:vit_b_16", image_size=384)
    assert vit.pretrained_cfg["input_size"] == (3, 384, 384)

    def weights_with(transforms):
        return lambda name: types.SimpleNamespace(DEFAULT=types.SimpleNamespace(transforms=transforms))

    monkeypatch.setattr(tvm, "get_model_weights", weights_with(functools.partial(
        print, crop_size=[240], resize_size=[256], interpolation=InterpolationMode.BICUBIC)))
    cfg = _torchvision_cfg("anynet")
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ((3, 240, 240), 0.9375, "bicubic")
    monkeypatch.setattr(tvm, "get_model_weights",
                        weights_with(functools.partial(print, crop_size=224, resize_size=224)))
    assert _torchvision_cfg("anynet")["crop_pct"] == 1.0  # resized to the crop: nothing cut
    monkeypatch.setattr(tvm, "get_model_weights", weights_with(lambda image: image))  # no recorded keywords
    assert _torchvision_cfg("anynet") == default_cfg()

    def no_weights(name):
        raise ValueError(f"no weights for {name}")
    monkeypatch.setattr(tvm, "get_model_weights", no_weights)
    assert _torchvision_cfg("anynet") == default_cfg()


def test_torchvision_builder_passes_weights_checks_channels_and_names_the_classifier(monkeypatch):
    """What nondeep adds around torchvision.models.get_model: weights only when pretrained (nothing is downloaded
    here: get_model is recorded), 3 channels or none said, its own errors, and the config of that model."""
    import torchvision.models as tvm

    calls = []

    def get_model(name, weights=None, **kwargs):
        calls.append((name, weights))
        if "depth" in kwargs:
            raise TypeError("unexpected keyword argument 'depth'")
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, kwargs.get("num_classes", 1000)))
    monkeypatch.setattr(tvm, "get_model", get_model)
    plain = create_model("torchvision:inception_v3")
    create_model("torchvision:inception_v3", pretrained=True, in_chans=3)
    assert calls == [("inception_v3", None), ("inception_v3", "DEFAULT")]
    cfg = plain.pretrained_cfg
    assert (cfg["input_size"], cfg["first_conv"], cfg["classifier"], cfg["num_classes"]) == (
        (3, 299, 299), "0", "2", 1000)  # the weights' crop of the name asked for, this model's modules
    assert create_model("torchvision:resnet18", num_classes=7).pretrained_cfg["num_classes"] == 7
    with pytest.raises(NondeepError) as err:
        create_model("torchvision:resnet18", in_chans=4)
    assert str(err.value) == ("torchvision:resnet18 takes 3-channel images only (got in_chans=4); use a nondeep or "
                              "timm: model for other channel counts")
    with pytest.raises(NondeepError) as err:
        create_model("torchvision:resnet18", depth=3)
    assert str(err.value) == ("torchvision:resnet18 does not take ['depth']: unexpected keyword argument 'depth'")


def test_torchvision_config_rounds_the_crop_to_4_digits_and_keeps_a_plain_interpolation_name(monkeypatch):
    import functools

    import torchvision.models as tvm

    from nondeep.models._registry import _torchvision_cfg

    assert nondeep.get_default_cfg("torchvision:resnet50")["crop_pct"] == 0.9655  # V2 weights: 224 of 232
    monkeypatch.setattr(tvm, "get_model_weights", lambda name: types.SimpleNamespace(DEFAULT=types.SimpleNamespace(
        transforms=functools.partial(print, crop_size=224, interpolation="nearest"))))
    assert _torchvision_cfg("anynet")["interpolation"] == "nearest"


def _fake_timm(monkeypatch, names, calls):
    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, kwargs))
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    fake = types.SimpleNamespace(create_model=fake_create_model, is_model=lambda n: n in names,
                                 list_models=lambda: list(names))
    monkeypatch.setitem(sys.modules, "timm", fake)


@pytest.mark.parametrize("prefix, lister", [("torchvision", "torchvision.models.list_models()"),
                                            ("timm", "timm.list_models()")])
def test_an_unknown_external_name_suggests_up_to_3_names_half_alike(monkeypatch, prefix, lister):
    import torchvision.models as tvm
    names = ["netaa", "netab", "netac", "netad", "abcdefgh"]
    monkeypatch.setattr(tvm, "list_models", lambda: list(names))
    _fake_timm(monkeypatch, names, [])
    # three of the four equally close names, in difflib's order
    for asked, hint in [("neta", f"; did you mean {prefix}:netad, {prefix}:netac, {prefix}:netab?"),
                        ("abcdwxyz", f"; did you mean {prefix}:abcdefgh?"),  # exactly half alike
                        ("zzzzzzzz", "")]:
        with pytest.raises(UnknownModelError) as err:
            create_model(f"{prefix}:{asked}")
        assert str(err.value) == f"unknown {prefix} model {asked!r}{hint} ({lister} lists them)"


def test_timm_gets_the_name_after_the_first_colon_and_no_out_indices_unless_asked(monkeypatch):
    calls = []
    _fake_timm(monkeypatch, ["hf-hub:org/net", "net"], calls)
    create_model("timm:hf-hub:org/net")
    create_model("timm:net", features_only=True)
    assert calls == [("hf-hub:org/net", {}), ("net", {"features_only": True})]


def test_external_errors_are_whole_sentences(monkeypatch):
    with pytest.raises(NondeepError) as err:
        create_model("torchvision:resnet18", features_only=True)
    assert str(err.value) == ("features_only is not available for torchvision:resnet18: use "
                              "torchvision.models.feature_extraction.create_feature_extractor on it")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(NondeepError) as err:
        create_model("timm:resnet50")
    assert str(err.value) == "timm:resnet50 needs timm, which is not installed: pip install timm"
