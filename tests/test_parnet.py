"""ParNet: the paper's parameter counts, measured depth 12, shapes, ablation arguments and input errors."""

import pytest
import torch
from torch import nn

from nondeep import InputShapeError, create_model, measure, reparameterize_model
from nondeep.models import ParNet, RepVGGBlock

# Paper (fused), and the unfused counts of a faithful re-statement of the authors' code (reference.md).
PAPER_FUSED_M = {"parnet_s": 19.0, "parnet_m": 35.6, "parnet_l": 54.9, "parnet_xl": 85.0}
REFERENCE_UNFUSED_M = {"parnet_s": 20.98, "parnet_m": 38.95, "parnet_l": 60.18, "parnet_xl": 93.18}


def _meta(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


@pytest.mark.parametrize("name", sorted(PAPER_FUSED_M))
def test_imagenet_parameter_counts_match_paper(name):
    model = _meta(name)
    fused = reparameterize_model(model)
    fused_m = measure.count_params(fused) / 1e6
    assert abs(fused_m - PAPER_FUSED_M[name]) / PAPER_FUSED_M[name] < 0.02, fused_m
    assert measure.count_params(model) / 1e6 == pytest.approx(REFERENCE_UNFUSED_M[name], abs=0.01)


@pytest.mark.parametrize("name", ["parnet_s", "parnet_xl", "parnet_small_image_s", "parnet_tiny"])
def test_depth_is_twelve_before_and_after_fusion(name):
    model = _meta(name)
    assert measure.depth(model) == 12
    assert measure.depth(reparameterize_model(model)) == 12


def test_fused_flops_of_parnet_s():
    # Reference: fused ParNet-S is 9.67 GFLOP (2 x MACs) at 224x224.
    assert measure.count_flops(reparameterize_model(_meta("parnet_s"))) / 1e9 == pytest.approx(9.67, abs=0.01)


def test_parnet_tiny_size_and_forms():
    model = create_model("parnet_tiny")
    assert 0.3e6 <= measure.count_params(model) <= 1e6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    grey = create_model("parnet_tiny", in_chans=1, num_classes=7)
    assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert grey.pretrained_cfg["input_size"] == (1, 32, 32) and len(grey.pretrained_cfg["mean"]) == 1


def test_imagenet_forward_and_small_image_flag():
    model = create_model("parnet_s").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    small = create_model("parnet_s", small_image=True)
    assert small.pretrained_cfg["input_size"] == (3, 32, 32) and small.num_classes == 10
    assert measure.depth(small) == 12


@pytest.mark.parametrize("num_streams, depth", [(1, 8), (2, 11), (3, 12), (4, 13)])
def test_stream_count_is_a_builder_argument(num_streams, depth):
    model = create_model("parnet_tiny", num_streams=num_streams, in_chans=1)
    assert len(model.streams) == num_streams and len(model.fusions) == max(0, num_streams - 1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    # One stream: stem 3 + stream 3 + head conv 1 + fc 1. Each stream more passes one more block: its
    # downsampling, a fusion; a fourth stream starts one block deeper than the third.
    assert measure.depth(model) == depth


def test_width_multiplier_and_block_types():
    base = measure.count_params(create_model("parnet_tiny"))
    wide = measure.count_params(create_model("parnet_tiny", width_multiplier=2.0))
    assert 3.0 < wide / base < 4.5  # conv weights grow with width squared
    for block_type in ("rep_sse", "rep", "plain"):
        model = create_model("parnet_tiny", block_type=block_type)
        assert all(b.block_type == block_type for b in model.modules() if isinstance(b, RepVGGBlock))
    plain = create_model("parnet_tiny", block_type="plain")
    assert not any(b.conv1x1 is not None for b in plain.modules() if isinstance(b, RepVGGBlock))
    with pytest.raises(ValueError, match="block_type"):
        create_model("parnet_tiny", block_type="resnet")


def test_classifier_api():
    model = create_model("parnet_tiny")
    assert model.get_classifier().out_features == 10
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, model.num_features, 8, 8)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)


def test_wrong_channels_and_size_say_what_is_expected():
    model = create_model("parnet_tiny")
    with pytest.raises(InputShapeError, match="expects 3 input channel"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(InputShapeError, match="multiples of 4"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(InputShapeError, match="^parnet_s expects height and width that are multiples of 32"):
        create_model("parnet_s")(torch.randn(1, 3, 100, 100))
    with pytest.raises(InputShapeError, match="^parnet_s expects 3 input channel"):  # the errors name the family
        create_model("parnet_small_image_s")(torch.randn(1, 1, 32, 32))
    with pytest.raises(InputShapeError, match="^parnet_tiny expects height and width that are multiples of 4"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="widths"):
        ParNet(widths=(8, 16, 32), stream_depths=(1, 1, 1))


def _stream_widths(model) -> list[int]:
    return [stream[0].conv3x3.conv.out_channels if len(stream) else None for stream in model.streams]


def test_widths_are_scaled_to_multiples_of_8_and_streams_continue_the_pattern():
    assert _stream_widths(create_model("parnet_tiny", width_multiplier=0.5)) == [8, 16, 32]
    # 0.35 x (16, 32, 64) = 5.6, 11.2, 22.4: at least 8, then the nearest multiple of 8
    assert _stream_widths(create_model("parnet_tiny", width_multiplier=0.35)) == [8, 8, 24]
    assert create_model("parnet_tiny", width_multiplier=0.5).num_features == 64
    assert create_model("parnet_tiny", width_multiplier=0.01).num_features == 8  # never below 8
    assert create_model("parnet_tiny", head_width=40).num_features == 40
    five = create_model("parnet_tiny", num_streams=5)
    assert _stream_widths(five) == [16, 32, 64, 128, 256]  # each new stream doubles the width
    assert [len(s) for s in five.streams] == [3, 4, 4, 4, 4]  # ... with the last stream's depth (small form: -1)
    assert _stream_widths(create_model("parnet_tiny", num_streams=2)) == [16, 32]
    with pytest.raises(ValueError) as err:
        create_model("parnet_tiny", num_streams=0)
    assert str(err.value) == "num_streams must be >= 1, got 0"
    with pytest.raises(ValueError) as err:
        ParNet(widths=(8, 16, 32), stream_depths=(1, 1, 1))
    assert str(err.value) == ("widths needs one entry per stream plus the head width: got 3 widths for 3 streams")
    with pytest.raises(ValueError, match="got 1 widths for 0 streams"):
        ParNet(widths=(8,), stream_depths=())


def test_the_input_divisor_follows_the_form_and_the_streams():
    assert create_model("parnet_tiny").input_divisor == 4
    assert create_model("parnet_tiny", num_streams=1).input_divisor == 1
    assert create_model("parnet_tiny", num_streams=4).input_divisor == 8
    assert create_model("parnet_s").input_divisor == 32
    assert create_model("parnet_s", num_streams=1).input_divisor == 8


def test_the_small_image_form_of_the_imagenet_widths():
    model = create_model("parnet_small_image_s", width_multiplier=0.25)
    assert model.small_image and model.num_classes == 10 and model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model.num_features == 2 * _stream_widths(model)[2]  # the narrower 1x1 head: twice the last stream
    assert create_model("parnet_small_image_s", width_multiplier=0.25, num_classes=5).num_classes == 5
    assert create_model("parnet_s", width_multiplier=0.25).pretrained_cfg["input_size"] == (3, 224, 224)


def test_a_parnet_built_directly_has_no_dropout_and_its_errors_name_it():
    model = ParNet(widths=(8, 16, 32, 64), stream_depths=(1, 1, 1), num_classes=3).train()
    features = torch.ones(2, model.num_features, 2, 2)
    assert model.drop_rate == 0 and torch.equal(model.forward_head(features, pre_logits=True), torch.ones(2, 64))
    with pytest.raises(InputShapeError, match="^parnet expects 3 input channel"):
        model(torch.randn(1, 1, 32, 32))


def test_dropout_before_the_classifier_in_training_only():
    model = create_model("parnet_tiny", drop_rate=0.5, width_multiplier=0.5)
    features = torch.ones(4, model.num_features, 2, 2)
    model.train()
    pooled = model.forward_head(features, pre_logits=True)
    assert set(pooled.unique().tolist()) == {0.0, 2.0}  # dropped or scaled by 1 / (1 - 0.5)
    model.eval()
    assert torch.equal(model.forward_head(features, pre_logits=True), torch.ones(4, model.num_features))


def test_intermediates_refuse_other_formats_and_pruning_names_the_head_level():
    model = create_model("parnet_tiny")
    with pytest.raises(ValueError) as err:
        model.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NHWC")
    assert str(err.value) == "ParNet gives NCHW maps only, got output_fmt='NHWC'"
    with pytest.raises(ValueError) as err:
        model.prune_intermediate_layers([2], prune_head=False)
    assert str(err.value) == ("prune_head=False keeps the classifier, which needs the head conv: include the last "
                              "level (3) in indices or prune the head")


def test_pruning_to_a_stream_keeps_only_what_it_needs():
    model = create_model("parnet_tiny").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        (level1,) = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    stream1 = model.streams[1]
    assert model.prune_intermediate_layers([1]) == [1]
    assert isinstance(model.streams[0], nn.Identity) and len(model.streams) == 2  # stream 0 not asked for
    assert model.streams[1] is stream1  # the stream asked for stays, with its weights
    with torch.no_grad():
        assert torch.equal(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], level1)
        assert torch.equal(model.forward_features(x), level1)  # the pruned model ends at the last level kept
    first = create_model("parnet_tiny").eval()
    with torch.no_grad():
        (level0,) = first.forward_intermediates(x, indices=[0], intermediates_only=True)
        first.prune_intermediate_layers([0])
        assert len(first.streams) == 1 and torch.equal(first.forward_features(x), level0)
    assert len(model.downsamples) == 1 and len(model.fusions) == 0 and model.first_stream_down is None
    assert isinstance(model.head_conv, nn.Identity) and isinstance(model.fc, nn.Identity)
    fused = create_model("parnet_tiny")
    fused.prune_intermediate_layers([2])  # the fused level: streams and fusions stay, the head conv goes
    assert len(fused.streams) == 3 and len(fused.fusions) == 2 and isinstance(fused.head_conv, nn.Identity)
    head = create_model("parnet_tiny")
    head.prune_intermediate_layers([3])
    assert not isinstance(head.head_conv, nn.Identity) and isinstance(head.fc, nn.Identity)


def test_intermediates_final_map_and_stop_early():
    """Without stop_early (the default) the final map is the head conv's, whatever the levels asked for; with it,
    the final map is the deepest level asked for, and nothing after that level runs."""
    model = create_model("parnet_tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    head_level = model.num_streams  # levels: the streams but the last, the fused map, the head conv's map
    with torch.no_grad():
        features = model.forward_features(x)
        final, levels = model.forward_intermediates(x)
        assert torch.equal(final, features) and torch.equal(levels[head_level], features)
        final, _ = model.forward_intermediates(x, indices=[0])
        assert torch.equal(final, features)
        for level in range(head_level + 1):
            final, (only,) = model.forward_intermediates(x, indices=[level], stop_early=True)
            assert torch.equal(only, levels[level]) and torch.equal(final, only), level
    ran = []
    for name, module in [*((f"stream{i}", s) for i, s in enumerate(model.streams)), ("head_conv", model.head_conv)]:
        module.register_forward_hook(lambda m, args, out, name=name: ran.append(name))
    with torch.no_grad():
        model.forward_intermediates(x, indices=[0], stop_early=True)
        assert ran == ["stream0"]
        ran.clear()
        model.forward_intermediates(x, indices=[head_level - 1], stop_early=True)  # the fused map: no head conv
        assert ran == [f"stream{i}" for i in range(model.num_streams)]


def test_the_constructors_head_pooling_and_feature_levels():
    assert create_model("parnet_tiny", num_classes=0, global_pool="").global_pool == ""  # the map, unpooled
    assert isinstance(create_model("parnet_tiny", num_classes=0).fc, nn.Identity)
    assert create_model("parnet_tiny", num_classes=1).fc.out_features == 1  # one class is still a linear head
    with pytest.raises(ValueError, match="needs num_classes=0"):
        create_model("parnet_tiny", global_pool="")
    levels = {n: [(f["module"], f["reduction"]) for f in create_model("parnet_tiny", num_streams=n).feature_info]
              for n in (1, 3, 4)}
    assert levels[1] == [("streams.0", 1), ("head_conv", 1)]  # no fusion: the one stream is the fused level
    assert levels[3] == [("streams.0", 1), ("streams.1", 2), ("fusions.1", 4), ("head_conv", 4)]
    assert levels[4] == [("streams.0", 1), ("streams.1", 2), ("streams.2", 4), ("fusions.2", 8), ("head_conv", 8)]
