"""Wide ResNets and the pre-act ResNet baselines: the paper's parameter counts, measured depth, the
wrn_<n>_<k> names, shapes, the classifier API and input errors."""

import pytest
import torch
from torch import nn

from nondeep import measure
from nondeep.errors import InputShapeError
from nondeep.models import WideResNet, create_model, get_default_cfg
from nondeep.models.wrn import PreActBasicBlock, PreActBottleneck

# (name, paper's parameters in millions, tolerance): WRN paper, CIFAR-10 (10 classes).
PAPER_PARAMS_M = [
    ("wrn_28_10", 36.5, 0.02), ("wrn_40_4", 8.9, 0.02), ("wrn_16_8", 11.0, 0.02),
    ("preact_resnet_164", 1.7, 0.03), ("preact_resnet_1001", 10.2, 0.03),
]


def _meta(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


@pytest.mark.parametrize("name, paper_m, tol", PAPER_PARAMS_M)
def test_parameter_counts_match_paper(name, paper_m, tol):
    params_m = measure.count_params(_meta(name)) / 1e6
    assert abs(params_m - paper_m) / paper_m < tol, params_m


@pytest.mark.parametrize("name, expected", [
    ("wrn_16_4", 14), ("wrn_28_10", 26),  # WRN-n-k: n - 2, the three 1x1 shortcut convs run in parallel
    ("preact_resnet_20", 20), ("preact_resnet_110", 110), ("preact_resnet_164", 164),
])
def test_measured_depth(name, expected):
    assert measure.depth(_meta(name)) == expected


def test_any_wrn_name_resolves():
    model = _meta("wrn_10_3")
    assert isinstance(model, WideResNet)
    assert (model.depth, model.widen_factor, model.num_features) == (10, 3, 192)
    assert measure.depth(model) == 8
    assert get_default_cfg("wrn_10_3")["input_size"] == (3, 32, 32)
    assert model.pretrained_cfg["architecture"] == "wrn_10_3"


@pytest.mark.parametrize("name", ["wrn_27_2", "wrn_4_1", "wrn_0_2"])
def test_invalid_wrn_depth_says_which_depths_are_valid(name):
    with pytest.raises(ValueError, match=r"6N\+4 for N >= 1 \(10, 16, 22, 28"):
        _meta(name)


def test_bottleneck_option():
    model = _meta("wrn_29_2", block="bottleneck")
    assert all(isinstance(b, PreActBottleneck) for b in model.layer1)
    assert model.num_features == 64 * 2 * 4
    assert measure.depth(model) == 29
    with pytest.raises(ValueError, match=r"9N\+2"):
        _meta("wrn_28_2", block="bottleneck")


def test_forward_shapes_and_classifier_api():
    x = torch.randn(2, 3, 32, 32)
    for name in ["wrn_16_1", "preact_resnet_20"]:
        model = create_model(name).eval()
        assert model(x).shape == (2, 10)
        features = model.forward_features(x)
        assert features.shape == (2, 64, 8, 8)
        assert (features >= 0).all()  # after the final BN-ReLU
        pooled = model.forward_head(features, pre_logits=True)
        assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier() is model.fc
        model.reset_classifier(0)
        assert model.num_classes == 0 and isinstance(model.fc, nn.Identity)
        torch.testing.assert_close(model(x), pooled)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)


def test_blocks_and_options():
    model = create_model("wrn_16_2", num_classes=100, in_chans=1, drop_rate=0.3)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 100)
    assert model.pretrained_cfg["input_size"] == (1, 32, 32)
    block = model.layer2[0]
    assert isinstance(block, PreActBasicBlock) and block.drop.p == 0.3
    assert block.shortcut is not None and model.layer2[1].shortcut is None
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 16
    assert torch.all(model.fc.bias == 0)


def test_input_errors_name_the_expected_value():
    model = create_model("wrn_16_1")
    with pytest.raises(InputShapeError, match="expects 3 input channel"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(InputShapeError, match="multiples of 4"):
        model(torch.randn(2, 3, 30, 30))


def test_bad_arguments():
    with pytest.raises(ValueError, match="widen_factor"):
        WideResNet(16, 0)
    with pytest.raises(ValueError, match="block must be one of"):
        WideResNet(16, 1, block="wide")
