"""What every model family shares (nondeep.models._helpers): the input check's one-line refusals at each edge,
the channel shuffle's permutation, and the classifier-head contract (global_pool, a new head's device, dtype
and mode, and ClassifierHead, the forward / get_classifier / reset_classifier every family inherits)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nondeep.errors import InputShapeError
from nondeep.models._helpers import (GLOBAL_POOLS, ClassifierHead, channel_shuffle, check_global_pool, check_input,
                                     new_classifier)


def refusal(x: torch.Tensor, **kwargs) -> str:
    with pytest.raises(InputShapeError) as err:
        check_input(x, "net", **kwargs)
    return str(err.value)


def test_a_valid_input_is_returned_unchanged():
    x = torch.randn(2, 3, 64, 32)
    assert check_input(x, "net", 3) is x
    assert check_input(x, "net", 3, divisor=32) is x  # 64 and 32 are multiples of 32 and not below it
    assert check_input(x, "net", 3, exact_size=[64, 32]) is x
    odd = torch.randn(1, 1, 5, 7)
    assert check_input(odd, "net", 1) is odd and check_input(odd, "net", 1, divisor=1) is odd  # default 1: any size
    empty = torch.randn(1, 1, 0, 7)
    assert check_input(empty, "net", 1, divisor=1) is empty  # divisor 1 imposes nothing, not even a side >= 1
    edge = torch.randn(1, 1, 32, 64)
    assert check_input(edge, "net", 1, divisor=32) is edge  # a side equal to the divisor


@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 1, 1, 28, 28), (28,)])
def test_a_batch_that_is_not_4d_is_refused(shape):
    assert refusal(torch.zeros(shape), in_chans=1) == (f"net expects a 4-d batch (N, C, H, W), got shape "
                                                       f"{list(shape)}")


def test_the_wrong_channel_count_says_how_to_build_the_model():
    assert refusal(torch.zeros(1, 3, 8, 8), in_chans=1) == ("net expects 1 input channel(s), got 3: build it with "
                                                            "in_chans=3 or convert the images")


@pytest.mark.parametrize("h,w", [(32, 28), (28, 32), (27, 28), (30, 28)])
def test_an_exact_size_is_checked_on_each_side(h, w):
    assert refusal(torch.zeros(1, 1, h, w), in_chans=1, exact_size=[28, 30]) == (
        f"net expects 28x30 images, got {h}x{w}: resize the input or build the model with input_size=({h}, {w})")


@pytest.mark.parametrize("h,w", [(36, 32), (32, 36), (16, 32), (32, 16), (0, 32)])
def test_sides_must_be_positive_multiples_of_the_divisor(h, w):
    assert refusal(torch.zeros(1, 1, h, w), in_chans=1, divisor=32) == (
        f"net expects height and width that are multiples of 32 (e.g. 224), got {h}x{w}: resize or pad the input")


def test_a_divisor_of_2_is_checked():
    assert refusal(torch.zeros(1, 1, 6, 5), in_chans=1, divisor=2).startswith("net expects height and width that "
                                                                              "are multiples of 2 (e.g. 14)")


def test_the_checks_run_in_order_channels_then_size():
    assert "input channel" in refusal(torch.zeros(1, 3, 5, 5), in_chans=1, divisor=4, exact_size=[8, 8])
    assert "8x8 images" in refusal(torch.zeros(1, 1, 5, 5), in_chans=1, divisor=4, exact_size=[8, 8])


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1).expand(2, 6, 3, 3)
    assert channel_shuffle(x, 2)[0, :, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3)[1, :, 2, 2].tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 1).equal(x) and channel_shuffle(x, 2).shape == x.shape


def test_global_pool_choices():
    assert GLOBAL_POOLS == ("avg", "")
    assert check_global_pool(None, 10) == "avg"                      # a linear head takes pooled features
    assert check_global_pool(None, 10, current="") == "avg"          # ... and brings pooling back
    assert check_global_pool(None, 0, current="") == ""              # no head: the current pooling stays
    assert check_global_pool(None, 0) == "avg"
    assert check_global_pool(None, 1, current="") == "avg"             # one class is a linear head too
    assert check_global_pool("avg", 0) == "avg" and check_global_pool("", 0) == ""
    with pytest.raises(ValueError) as err:
        check_global_pool("max", 0)
    assert str(err.value) == "global_pool must be 'avg' or '' (no pooling), got 'max'"
    with pytest.raises(ValueError) as err:
        check_global_pool("", 1)
    assert str(err.value) == ("global_pool='' (no pooling) needs num_classes=0: the linear head takes pooled "
                              "features")


class Body(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, dtype=dtype)
        self.fc = nn.Linear(4, 2)  # the old head, float32 whatever the body


def test_a_new_head_takes_the_bodys_dtype_and_mode_not_the_old_heads():
    model = Body(torch.float64).eval()
    head = new_classifier(model, 4, 7)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (4, 7)
    assert head.weight.dtype == torch.float64 and not head.training
    assert new_classifier(Body().train(), 4, 3).training
    assert new_classifier(Body(), 4, 1).out_features == 1  # one class: still a linear head


def test_no_classes_is_no_head_and_a_model_without_other_parameters_gets_defaults():
    assert isinstance(new_classifier(Body(), 4, 0), nn.Identity)
    assert isinstance(new_classifier(Body(), 4, -1), nn.Identity)
    head_only = nn.Module()
    head_only.fc = nn.Linear(4, 2, dtype=torch.float64)  # only head parameters: nothing to follow
    assert new_classifier(head_only, 4, 2).weight.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_new_head_is_on_the_bodys_device():
    assert new_classifier(Body().cuda(), 4, 3).weight.is_cuda


class PooledNet(ClassifierHead, nn.Module):
    """The smallest family on ClassifierHead: a conv body, average pooling or none, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, dtype=torch.float64)
        self.num_features, self.num_classes, self.global_pool = 4, 2, "avg"
        self.fc = nn.Linear(4, 2, dtype=torch.float64)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)


def test_classifier_head_forward_is_the_head_on_the_features_and_reset_replaces_fc():
    net = PooledNet().eval()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    assert torch.equal(net(x), net.fc(net.conv(x).mean((2, 3))))
    assert net.get_classifier() is net.fc

    net.reset_classifier(5)                                   # a new linear head, in the body's dtype and mode
    assert net.num_classes == 5 and net.global_pool == "avg" and net.get_classifier() is net.fc
    assert (net.fc.in_features, net.fc.out_features, net.fc.weight.dtype) == (4, 5, torch.float64)
    assert not net.fc.training and net(x).shape == (3, 5)

    net.reset_classifier(0, global_pool="")                   # no head, no pooling: the feature map
    assert isinstance(net.fc, nn.Identity) and (net.num_classes, net.global_pool) == (0, "")
    assert torch.equal(net(x), net.conv(x))
    net.reset_classifier(0)                                   # None keeps the current pooling
    assert net.global_pool == ""
    with pytest.raises(ValueError, match="needs num_classes=0"):
        net.reset_classifier(3, global_pool="")
    net.reset_classifier(3)                                   # a linear head brings pooling back
    assert net.global_pool == "avg" and net(x).shape == (3, 3)
