"""Structural reparameterisation: fused == unfused (< 1e-5, float32, eval, random BN statistics)."""

import pytest
import torch
from torch import nn

from conftest import randomize_bn
from nondeep import create_model, measure, reparameterize_model
from nondeep.models import ConvBN, FusionBlock, RepVGGBlock


def _max_err(a: nn.Module, b: nn.Module, *inputs):
    with torch.no_grad():
        return (a(*inputs) - b(*inputs)).abs().max().item()


@pytest.mark.parametrize("in_chs,out_chs,stride,groups", [
    (8, 8, 1, 1),    # RepVGG-SSE block
    (8, 16, 2, 1),   # downsampling block (pooled 1x1 branch)
    (8, 16, 1, 1),   # stride-1 width change
    (16, 8, 2, 2),   # grouped downsampling (fusion)
    (16, 8, 1, 2),   # grouped stride-1 (last fusion)
    (8, 8, 1, 2),    # grouped identity: kernel indexed by in_channels // groups
])
@pytest.mark.parametrize("block_type", ["rep_sse", "rep", "plain"])
def test_block_fusion_is_exact(in_chs, out_chs, stride, groups, block_type):
    block = randomize_bn(RepVGGBlock(in_chs, out_chs, stride, groups, block_type)).eval()
    fused = reparameterize_model(block)
    assert fused is not block and not block.is_reparameterized
    assert fused.is_reparameterized and fused.conv3x3 is None and fused.conv1x1 is None
    x = torch.randn(3, in_chs, 12, 12)
    assert _max_err(block, fused, x) < 1e-5


def test_fusion_block_is_exact():
    block = randomize_bn(FusionBlock(8, 16, stride=2)).eval()
    fused = reparameterize_model(block)
    a, b = torch.randn(2, 8, 10, 10), torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        assert (block(a, b) - fused(a, b)).abs().max().item() < 1e-5


@pytest.mark.parametrize("kwargs", [
    dict(), dict(block_type="rep"), dict(block_type="plain"), dict(num_streams=1), dict(num_streams=4),
])
def test_model_fusion_is_exact(kwargs):
    model = randomize_bn(create_model("parnet_tiny", in_chans=1, **kwargs), seed=1).eval()
    fused = reparameterize_model(model)
    assert not any(isinstance(m, ConvBN) for m in fused.modules())
    assert measure.count_params(fused) < measure.count_params(model)
    x = torch.randn(4, 1, 32, 32)  # 4 streams need multiples of 8
    assert _max_err(model, fused, x) < 1e-5


def test_ungated_identity_folds_and_gated_stays():
    rep = reparameterize_model(RepVGGBlock(8, 8, block_type="rep"))
    sse = reparameterize_model(RepVGGBlock(8, 8, block_type="rep_sse"))
    assert rep.skip_bn is None and sse.skip_bn is not None and sse.gate is not None


def test_reparameterize_is_idempotent_copies_and_evals():
    model = randomize_bn(create_model("parnet_tiny")).train()
    fused = reparameterize_model(model)
    assert model.training and not fused.training  # the original is untouched
    assert any(isinstance(m, ConvBN) for m in model.modules())
    again = reparameterize_model(fused)
    x = torch.randn(2, 3, 32, 32)
    assert _max_err(fused, again, x) == 0.0
    same = reparameterize_model(model, inplace=True)
    assert same is model


def test_fused_state_dict_round_trips_strictly():
    fused = reparameterize_model(randomize_bn(create_model("parnet_tiny")))
    fresh = reparameterize_model(create_model("parnet_tiny"))
    fresh.load_state_dict(fused.state_dict(), strict=True)  # strict: no key may be silently missing
    x = torch.randn(2, 3, 32, 32)
    assert _max_err(fused, fresh.eval(), x) == 0.0
