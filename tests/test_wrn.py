"""Wide ResNets and the pre-act ResNet baselines: the paper's parameter counts, measured depth, the
wrn_<n>_<k> names, shapes, the classifier API and input errors."""

import pytest
import torch
from torch import nn

from nondeep import measure
from nondeep.errors import InputShapeError
from nondeep.models import WideResNet, create_model, get_default_cfg
from nondeep.models.wrn import PreActBasicBlock, PreActBottleneck, blocks_per_group

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
    for forward in (model.forward_features, model.forward_intermediates):  # each checks, naming the model
        with pytest.raises(InputShapeError) as err:
            forward(torch.randn(2, 1, 32, 32))
        assert str(err.value) == ("wrn_16_1 expects 3 input channel(s), got 1: build it with in_chans=1 or convert "
                                  "the images")
        with pytest.raises(InputShapeError) as err:
            forward(torch.randn(2, 3, 30, 30))
        assert str(err.value) == ("wrn_16_1 expects height and width that are multiples of 4 (e.g. 28), got 30x30: "
                                  "resize or pad the input")


def test_bad_arguments():
    with pytest.raises(ValueError, match="widen_factor"):
        WideResNet(16, 0)
    with pytest.raises(ValueError, match="block must be one of"):
        WideResNet(16, 1, block="wide")


def test_depth_rules_and_their_exact_refusals():
    assert blocks_per_group(16) == 2 and blocks_per_group(20, depth_rule="resnet") == 3
    assert blocks_per_group(29, "bottleneck") == 3 and blocks_per_group(29, "bottleneck", "resnet") == 3
    assert blocks_per_group(10) == 1  # the smallest: N = 1
    with pytest.raises(ValueError) as err:
        blocks_per_group(17)
    assert str(err.value) == ("depth 17 does not fit basic blocks: the depth must be 6N+4 for N >= 1 (10, 16, 22, "
                              "28, 34, 40, ...)")
    with pytest.raises(ValueError) as err:
        blocks_per_group(2, "bottleneck")
    assert str(err.value) == ("depth 2 does not fit bottleneck blocks: the depth must be 9N+2 for N >= 1 (11, 20, "
                              "29, 38, 47, 56, ...)")
    with pytest.raises(ValueError) as err:
        blocks_per_group(16, depth_rule="he")
    assert str(err.value) == "depth_rule must be 'wrn' or 'resnet', got 'he'"
    with pytest.raises(ValueError) as err:
        blocks_per_group(16, block="wide")
    assert str(err.value) == "block must be one of ['basic', 'bottleneck'], got 'wide'"


def test_widths_names_and_feature_levels():
    assert WideResNet(10, 1 / 16).layer1[0].conv1.out_channels == 1  # the narrowest: one channel
    with pytest.raises(ValueError) as err:
        WideResNet(10, 0.06)
    assert str(err.value) == "widen_factor must be >= 1/16 (at least one channel), got 0.06"
    fractional = WideResNet(10, 2.5)
    groups = (fractional.layer1, fractional.layer2, fractional.layer3)
    assert fractional.name == "wrn_10_2.5" and [g[0].conv1.out_channels for g in groups] == [40, 80, 160]
    assert WideResNet(20, 1, depth_rule="resnet").name == "preact_resnet_20"
    assert WideResNet(10, 1, stem_width=8).conv1.out_channels == 8
    bottleneck = WideResNet(11, 2, block="bottleneck", in_chans=1)
    assert bottleneck.feature_info == [dict(num_chs=128, reduction=1, module="layer1"),
                                       dict(num_chs=256, reduction=2, module="layer2"),
                                       dict(num_chs=512, reduction=4, module="act")]
    assert isinstance(bottleneck.layer1[0].drop, nn.Identity)
    assert (bottleneck.block, bottleneck.in_chans) == ("bottleneck", 1)
    assert isinstance(WideResNet(11, 1, block="bottleneck", drop_rate=0.2).layer1[0].drop, nn.Dropout)


def test_intermediates_stop_early_and_refuse_other_formats():
    model = create_model("wrn_16_1").eval()
    x = torch.randn(1, 3, 16, 16)
    final, levels = model.forward_intermediates(x)
    assert [tuple(m.shape) for m in levels] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4)]
    torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(levels[2], final)
    early_final, early = model.forward_intermediates(x, indices=[0], stop_early=True)
    assert len(early) == 1 and early_final.shape == (1, 16, 16, 16)  # nothing after layer1 ran
    late_final, _ = model.forward_intermediates(x, indices=[0])
    torch.testing.assert_close(late_final, final)  # without stop_early the final map is the last one
    assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    with pytest.raises(ValueError) as err:
        model.forward_intermediates(x, output_fmt="NHWC")
    assert str(err.value) == "wrn_16_1 gives NCHW maps only, got output_fmt='NHWC'"


def test_pruning_keeps_what_the_levels_need():
    for level, gone in ((0, ("layer2", "layer3", "bn", "act")), (1, ("layer3", "bn", "act")), (2, ())):
        model = create_model("wrn_16_1")
        assert model.prune_intermediate_layers([level]) == [level]
        assert isinstance(model.fc, nn.Identity) and model.num_classes == 0
        assert all(isinstance(getattr(model, name), nn.Identity) for name in gone)
        kept = {"layer1", "layer2", "layer3", "bn", "act"} - set(gone)
        assert not any(isinstance(getattr(model, name), nn.Identity) for name in kept - {"act"})
    assert create_model("wrn_16_1").prune_intermediate_layers([0, 2], prune_head=False) == [0, 2]  # head kept
    with pytest.raises(ValueError) as err:
        create_model("wrn_16_1").prune_intermediate_layers([1], prune_head=False)
    assert str(err.value) == ("prune_head=False keeps the classifier, which needs the last group: include level 2 "
                              "in indices or prune the head")


def test_a_new_head_starts_with_zero_bias_and_the_pooling_follows():
    model = create_model("wrn_16_1")
    model.reset_classifier(0, global_pool="")
    assert model.global_pool == "" and model(torch.randn(1, 3, 8, 8)).shape == (1, 64, 2, 2)  # the unpooled map
    model.reset_classifier(5)
    assert model.global_pool == "avg" and torch.all(model.fc.bias == 0) and model.fc.out_features == 5


@pytest.mark.parametrize("name", ["preact_resnet_20", "preact_resnet_164"])
def test_preact_resnets_pass_their_keyword_arguments_on(name):
    model = _meta(name, num_classes=3, in_chans=1, drop_rate=0.3)
    assert (model.num_classes, model.in_chans, model.fc.out_features) == (3, 1, 3)
    assert model.conv1.in_channels == 1 and any(isinstance(m, nn.Dropout) for m in model.modules())


def test_the_constructors_head_and_pooling():
    unpooled = create_model("wrn_16_1", num_classes=0, global_pool="")
    assert unpooled.global_pool == "" and isinstance(unpooled.fc, nn.Identity)
    assert unpooled(torch.randn(1, 3, 16, 16)).shape == (1, 64, 4, 4)  # the map itself
    assert isinstance(create_model("wrn_16_1", num_classes=0).fc, nn.Identity)
    one = create_model("wrn_16_1", num_classes=1)
    assert isinstance(one.fc, nn.Linear) and one.fc.out_features == 1 and one.global_pool == "avg"
    with pytest.raises(ValueError, match="needs num_classes=0"):
        create_model("wrn_16_1", num_classes=10, global_pool="")
