"""ParNet's blocks against an independent statement of their formulas, and crafted inputs that expose the
fusion block's channel interleave order, the channel shuffle and the gates' scales. These hold without any
stored numbers, and they fail for mistakes that the fused and the unfused forms would share."""

import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_bn
from nondeep import reparameterize_model
from nondeep.models.blocks import ConvBNAct, FusionBlock, RepVGGBlock, SqueezeGate
from nondeep.models._helpers import channel_shuffle


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _conv_bn(x, unit, stride=1, groups=1):
    k = unit.conv.weight.shape[-1]
    return _bn(F.conv2d(x, unit.conv.weight, None, stride, k // 2, groups=groups), unit.bn)


def _gate(x, block):
    return torch.sigmoid(F.conv2d(x.mean((2, 3), keepdim=True), block.gate.conv.weight, groups=block.groups))


def _paper_block(x, block):
    """The paper's blocks from the module's weights. RepVGG-SSE (stride 1, in == out):
    SiLU(BN(conv3x3 x) + BN(conv1x1 x) + s * sigmoid(W avgpool(s))) with s = BN(x). Downsampling:
    SiLU((BN(conv3x3/2 x) + BN(conv1x1 avgpool2x2 x)) * 2 sigmoid(W avgpool(x))). Grouped: then a shuffle."""
    g, s = block.groups, block.stride
    branches = _conv_bn(x, block.conv3x3, s, g)
    pointwise = block.conv1x1[1] if s == 2 else block.conv1x1
    branches = branches + _conv_bn(F.avg_pool2d(x, 2) if s == 2 else x, pointwise, 1, g)
    if block.skip_bn is not None:
        skip = _bn(x, block.skip_bn)
        out = branches + skip * _gate(skip, block)
    else:
        out = branches * 2 * _gate(x, block)
    out = F.silu(out)
    return channel_shuffle(out, g) if g > 1 else out


def _eval_block(*args, **kwargs):
    return randomize_bn(RepVGGBlock(*args, **kwargs)).eval()


@pytest.mark.parametrize("in_chs, out_chs, stride, groups", [(8, 8, 1, 1), (8, 16, 2, 1), (8, 12, 2, 2),
                                                              (8, 8, 1, 2)])
def test_blocks_compute_the_papers_formula(in_chs, out_chs, stride, groups):
    block = _eval_block(in_chs, out_chs, stride, groups)
    x = torch.randn(2, in_chs, 8, 8)
    with torch.no_grad():
        expected = _paper_block(x, block)
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(reparameterize_model(block)(x), expected, rtol=0, atol=1e-4)


def test_fusion_block_is_bn_interleave_grouped_block():
    fusion = randomize_bn(FusionBlock(6, 10, stride=2)).eval()
    stream, fused = torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8)
    a, b = _bn(stream, fusion.bn_stream), _bn(fused, fusion.bn_fused)
    joined = torch.empty(2, 12, 8, 8)
    joined[:, 0::2], joined[:, 1::2] = a, b  # stream channel c at 2c, the running fused map's at 2c + 1
    with torch.no_grad():
        torch.testing.assert_close(fusion(stream, fused), _paper_block(joined, fusion.block), rtol=0, atol=1e-5)


def test_fusion_interleaves_stream_first_channel_by_channel():
    fusion = FusionBlock(3, 4).eval()  # default BN statistics: each BN divides by sqrt(1 + eps)
    seen = []
    fusion.block.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    stream = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    with torch.no_grad():
        fusion(stream, -stream)
    channel_values = seen[0][0, :, 0, 0] * (1 + fusion.bn_stream.eps) ** 0.5
    torch.testing.assert_close(channel_values, torch.tensor([1.0, -1.0, 2.0, -2.0, 3.0, -3.0]))


def test_channel_shuffle_order():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


@pytest.mark.parametrize("fused", [False, True])
def test_grouped_block_shuffles_its_output_channels(fused):
    """A change in input group 0 reaches only group 0's outputs, which the shuffle puts at 0, 2, 4."""
    block = _eval_block(4, 6, stride=2, groups=2)
    block = reparameterize_model(block) if fused else block
    x = torch.randn(1, 4, 8, 8)
    moved = x.clone()
    moved[:, :2] += 1.0
    with torch.no_grad():
        changed = (block(moved) - block(x)).abs().amax((0, 2, 3)) > 1e-6
    assert changed.tolist() == [True, False, True, False, True, False]


@pytest.mark.parametrize("fused", [False, True])
def test_gate_scales(fused):
    """With the gate convs zeroed, sigmoid gives 0.5: the downsampling gate is then exactly 1 (x2 scale)
    and the SSE gate exactly 0.5 on the skip branch."""
    down = _eval_block(4, 8, stride=2)
    sse = _eval_block(4, 4, stride=1)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        for block in (down, sse):
            block.gate.conv.weight.zero_()
        ungated_down = F.silu(_conv_bn(x, down.conv3x3, 2) + _conv_bn(F.avg_pool2d(x, 2), down.conv1x1[1]))
        half_skip = F.silu(_conv_bn(x, sse.conv3x3) + _conv_bn(x, sse.conv1x1) + 0.5 * _bn(x, sse.skip_bn))
        if fused:
            down, sse = reparameterize_model(down), reparameterize_model(sse)
        torch.testing.assert_close(down(x), ungated_down, rtol=0, atol=1e-5)
        torch.testing.assert_close(sse(x), half_skip, rtol=0, atol=1e-5)


def test_downsampling_gate_reads_the_blocks_input():
    """The SE gate of a downsampling block is computed from its input x (not from the branch sum)."""
    block = _eval_block(4, 8, stride=2)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        block.gate.conv.weight.normal_()
        branches = _conv_bn(x, block.conv3x3, 2) + _conv_bn(F.avg_pool2d(x, 2), block.conv1x1[1])
        torch.testing.assert_close(block(x), F.silu(branches * 2 * _gate(x, block)), rtol=0, atol=1e-5)


def test_conv_bn_act_is_conv_bn_silu_a_1x1_by_default_and_folds_exactly():
    block = randomize_bn(ConvBNAct(4, 6)).eval()
    assert block.conv_bn.conv.kernel_size == (1, 1) and block.conv_bn.conv.bias is None
    x = torch.randn(2, 4, 5, 5)
    bn = block.conv_bn.bn
    expected = F.silu(F.batch_norm(F.conv2d(x, block.conv_bn.conv.weight), bn.running_mean, bn.running_var,
                                   bn.weight, bn.bias, eps=bn.eps))
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-6)
        block.reparameterize()
        assert block.conv_bn is None and block.conv.kernel_size == (1, 1)
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-5)


def test_squeeze_gate_is_pool_conv_sigmoid_ungrouped_by_default():
    gate = SqueezeGate(4, 6)
    assert gate.conv.groups == 1 and gate.conv.bias is None and gate.scale == 1.0
    x = torch.randn(2, 4, 5, 5)
    expected = torch.sigmoid(F.conv2d(x.mean((2, 3), keepdim=True), gate.conv.weight))
    torch.testing.assert_close(gate(x), expected, rtol=0, atol=1e-6)


def test_a_block_records_its_type_and_refuses_an_unknown_one():
    assert [RepVGGBlock(4, 4, block_type=t).block_type for t in ("rep_sse", "rep", "plain")] == ["rep_sse", "rep",
                                                                                               "plain"]
    with pytest.raises(ValueError, match=r"block_type must be one of \('rep_sse', 'rep', 'plain'\), got 'repvgg'"):
        RepVGGBlock(4, 4, block_type="repvgg")
