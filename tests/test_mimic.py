"""Ba & Caruana's shallow mimic students: shapes, the linear bottleneck, parameter counts and input errors."""

import pytest
import torch
import torch.fx
from torch import nn

from nondeep import measure
from nondeep.errors import InputShapeError
from nondeep.models import ConvShallowMimicNet, ShallowMimicNet, create_model, get_default_cfg


def _expected_params(in_features, hidden, bottleneck, classes=10):
    # bottleneck weights (no bias) + hidden weights and bias + classifier weights and bias
    first = in_features * bottleneck + bottleneck * hidden if bottleneck else in_features * hidden
    return first + hidden + hidden * classes + classes


@pytest.mark.parametrize("name, in_features, hidden, bottleneck", [
    ("mimic_snn_1k", 784, 1000, 250),
    ("mimic_snn_8k", 784, 8000, 250),
    ("mimic_snn_8k_nobottleneck", 784, 8000, None),
])
def test_parameter_count_formula(name, in_features, hidden, bottleneck):
    with torch.device("meta"):
        model = create_model(name)
    assert measure.count_params(model) == _expected_params(in_features, hidden, bottleneck)


def test_conv_student_parameter_count():
    with torch.device("meta"):
        model = create_model("mimic_cnn_8k")
    conv = 1 * 128 * 5 * 5 + 128
    assert measure.count_params(model) == conv + _expected_params(128 * 14 * 14, 8000, 250)


def test_bottleneck_is_linear():
    model = ShallowMimicNet(hidden=64, bottleneck=16)
    graph = torch.fx.symbolic_trace(model).graph
    (bottleneck,) = [n for n in graph.nodes if n.op == "call_module" and n.target == "bottleneck"]
    # The bottleneck feeds the hidden layer directly: no activation in between.
    assert [(u.op, u.target) for u in bottleneck.users] == [("call_module", "hidden")]
    assert model.bottleneck.bias is None
    assert ShallowMimicNet(hidden=64, bottleneck=None).bottleneck is None


@pytest.mark.parametrize("cls", [ShallowMimicNet, ConvShallowMimicNet])
def test_shapes_and_classifier_api(cls):
    model = cls(hidden=64, bottleneck=16, conv_channels=8) if cls is ConvShallowMimicNet else cls(hidden=64)
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    hidden = model.forward_features(x)
    assert hidden.shape == (2, 64) and model.num_features == 64 and (hidden >= 0).all()
    assert model.get_classifier() is model.fc
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), hidden)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3


def test_registered_students_forward():
    x = torch.randn(2, 1, 28, 28)
    for name in ["mimic_snn_1k", "mimic_cnn_8k"]:
        assert create_model(name)(x).shape == (2, 10)
    cfg = get_default_cfg("mimic_snn_8k")
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == (0.2860,) and cfg["std"] == (0.3530,)


def test_input_size_and_channels():
    model = create_model("mimic_snn_1k", in_chans=3, num_classes=100)
    assert model.input_size == (3, 28, 28) and model.pretrained_cfg["input_size"] == (3, 28, 28)
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 100)
    model = ConvShallowMimicNet(input_size=(3, 32, 32), hidden=32, conv_channels=4)
    assert model.input_size == (3, 32, 32) and model.bottleneck.in_features == 4 * 16 * 16
    assert ShallowMimicNet(input_size=(32, 32), hidden=32).input_size == (1, 32, 32)


def test_input_errors_name_the_expected_value():
    model = ShallowMimicNet(hidden=32)
    with pytest.raises(InputShapeError, match="expects 28x28 images, got 32x32"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(InputShapeError, match="expects 1 input channel"):
        model(torch.randn(2, 3, 28, 28))


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        ShallowMimicNet(activation="gelu")
    with pytest.raises(ValueError, match="conv_channels"):
        ConvShallowMimicNet(conv_channels=0)
    assert isinstance(ShallowMimicNet(hidden=8, activation="tanh").act, nn.Tanh)


def test_conv_layers_stack_conv_relu_pool_and_keep_the_one_layer_keys():
    """The depth study's students: n conv + ReLU + 2x2 max-pool layers; n = 1 is mimic_cnn_8k, whose state-dict
    keys (conv.0.*) the pinned reference outputs were made with."""
    one = create_model("mimic_cnn_8k")
    assert [k for k in one.state_dict() if k.startswith("conv.")] == ["conv.0.weight", "conv.0.bias"]
    assert create_model("mimic_cnn_8k", conv_layers=2).bottleneck.in_features == 128 * 7 * 7
    for n, side in ((2, 7), (3, 3)):
        model = ConvShallowMimicNet(conv_layers=n, hidden=16)
        convs = [m for m in model.conv if isinstance(m, nn.Conv2d)]
        assert len(convs) == n and convs[0].in_channels == 1 and convs[-1].in_channels == 128
        assert model.bottleneck.in_features == 128 * side * side
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert measure.depth(model, (1, 28, 28)) == n + 3  # convs, bottleneck, hidden, classifier
    with pytest.raises(ValueError, match="conv_layers"):
        ConvShallowMimicNet(conv_layers=0)
    with pytest.raises(ValueError, match="max-pools leave nothing"):
        ShallowMimicNet(input_size=(1, 8, 8), conv_layers=4)


def test_each_bad_argument_is_one_exact_line():
    cases = [
        (lambda: ShallowMimicNet(input_size=(1, 2, 28, 28)),
         "input_size must be (C, H, W) or (H, W), got (1, 2, 28, 28)"),
        (lambda: ShallowMimicNet(input_size=(28,)), "input_size must be (C, H, W) or (H, W), got (28,)"),
        (lambda: ShallowMimicNet(activation="gelu"),
         "activation must be one of ['relu', 'sigmoid', 'tanh'], got 'gelu'"),
        (lambda: ShallowMimicNet(conv_layers=-1), "need conv_layers >= 0 and conv_channels >= 1, got -1 and 128"),
        (lambda: ShallowMimicNet(conv_layers=1, conv_channels=0),
         "need conv_layers >= 0 and conv_channels >= 1, got 1 and 0"),
        (lambda: ShallowMimicNet(input_size=(1, 8, 16), conv_layers=4),
         "4 2x2 max-pools leave nothing of a 8x16 input: use fewer conv_layers"),
        (lambda: ConvShallowMimicNet(conv_layers=0),
         "conv_layers must be >= 1, got 0: use ShallowMimicNet for no conv"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError) as err:
            build()
        assert str(err.value) == message


def test_the_edges_of_the_arguments_are_accepted():
    assert ShallowMimicNet(input_size=(1, 8, 16), conv_layers=3, hidden=4).bottleneck.in_features == 128 * 1 * 2
    assert ShallowMimicNet(conv_layers=0, conv_channels=0, hidden=4).bottleneck.in_features == 784  # no conv: unused
    assert isinstance(ShallowMimicNet(hidden=4).act, nn.ReLU)
    assert isinstance(ShallowMimicNet(hidden=4, activation="sigmoid").act, nn.Sigmoid)
    plain = ShallowMimicNet(hidden=4, bottleneck=None)
    assert plain.bottleneck is None and plain.hidden.in_features == 784
    assert plain(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert ShallowMimicNet(hidden=4, bottleneck=0).bottleneck is None  # 0 units: no bottleneck either
    assert ShallowMimicNet(hidden=4, bottleneck=7).bottleneck.bias is None  # linear, no bias


def test_the_head_of_a_flat_net():
    model = ShallowMimicNet(hidden=6)
    assert model.get_classifier() is model.fc and model.num_features == model.head_hidden_size == 6
    model.reset_classifier(0)
    assert isinstance(model.fc, nn.Identity) and model.num_classes == 0
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 6)  # the hidden activations
    model.reset_classifier(3, global_pool="avg")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3) and model.num_classes == 3
    with pytest.raises(ValueError) as err:
        model.reset_classifier(3, global_pool="")
    assert str(err.value) == "ShallowMimicNet is a flat net with no pooling to change: global_pool=''"
    features = model.forward_features(torch.randn(2, 1, 28, 28))
    assert torch.equal(model.forward_head(features, pre_logits=True), features)
    assert model.name == "ShallowMimicNet" and ConvShallowMimicNet(hidden=4).name == "ConvShallowMimicNet"


def test_defaults_heads_and_positional_arguments():
    """The paper's 8k hidden units by default; a head of 0 classes is none and 1 class a linear head; the conv
    student takes ShallowMimicNet's arguments positionally too; one conv channel is enough."""
    assert ShallowMimicNet().hidden.out_features == 8000 and ShallowMimicNet().bottleneck.out_features == 250
    x = torch.randn(2, 1, 28, 28)
    assert ShallowMimicNet(hidden=4, num_classes=0)(x).shape == (2, 4)
    assert ShallowMimicNet(hidden=4, num_classes=1)(x).shape == (2, 1)
    conv = ConvShallowMimicNet((1, 32, 32), 3, 4, conv_channels=2)
    assert conv.input_size == (1, 32, 32) and conv(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert ShallowMimicNet(conv_layers=1, conv_channels=1, hidden=4).bottleneck.in_features == 14 * 14
    with pytest.raises(InputShapeError) as err:
        ShallowMimicNet(hidden=4)(torch.randn(2, 1, 32, 32))
    assert str(err.value).startswith("ShallowMimicNet expects 28x28 images, got 32x32")
