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
