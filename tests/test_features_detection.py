"""Multi-scale features (feature_info, features_only) and detectors on nondeep backbones."""

import math

import pytest
import torch
from conftest import randomize_bn

from nondeep import create_model, measure, reparameterize_model
from nondeep.models.features import FeatureExtractor

# name, builder kwargs, input side, expected (channels, reduction) per level
CASES = {
    "parnet_imagenet": ("parnet_s", {"width_multiplier": 0.25}, 224, [(24, 4), (48, 8), (96, 16), (320, 32)]),
    "parnet_small": ("parnet_tiny", {}, 32, [(16, 1), (32, 2), (64, 4), (128, 4)]),
    "wrn": ("wrn_16_1", {}, 32, [(16, 1), (32, 2), (64, 4)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_feature_shapes_channels_and_strides(case):
    name, kwargs, side, expected = CASES[case]
    model = create_model(name, **kwargs)
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == expected
    features = create_model(name, features_only=True, **kwargs).eval()
    assert isinstance(features, FeatureExtractor) and features.pretrained_cfg["architecture"] == name
    assert features.out_channels == [c for c, _ in expected] == features.feature_info.channels()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, side, side))
    assert [tuple(m.shape) for m in maps] == [(1, c, side // r, side // r) for c, r in expected]
    reductions = features.feature_info.reduction()
    assert reductions == sorted(reductions)
    # Every level names a real module of the model.
    modules = dict(model.named_modules())
    assert all(f["module"] in modules for f in model.feature_info)


def _rel_err(got, want):
    """Max abs error over the map's largest magnitude: float32 fusion error grows with the activations."""
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize("case", sorted(CASES))
def test_intermediates_match_the_classifier_and_fusion(case):
    name, kwargs, side, expected = CASES[case]
    model = randomize_bn(create_model(name, **kwargs)).eval()
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        final, levels = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x))
        assert len(levels) == len(expected)
        # A pruned extractor carrying the classifier's weights gives the same maps, fused or not.
        features = FeatureExtractor(create_model(name, **kwargs), out_indices=(0, len(expected) - 1)).eval()
        missing, _ = features.model.load_state_dict(model.state_dict(), strict=False)
        assert not missing
        for got, want in zip(features(x), (levels[0], levels[-1])):
            assert torch.allclose(got, want, atol=1e-5)
        fused = reparameterize_model(features)
        for got, want in zip(fused(x), (levels[0], levels[-1])):
            assert _rel_err(got, want) < 1e-5


def test_out_indices_select_and_prune():
    features = create_model("parnet_s", features_only=True, out_indices=(0, 1), width_multiplier=0.25)
    assert features.out_indices == (0, 1) and features.feature_info.reduction() == [4, 8]
    names = {n for n, _ in features.named_parameters()}
    assert not any(n.startswith(("model.head_conv", "model.fc", "model.fusions", "model.streams.2")) for n in names)
    maps = features(torch.randn(2, 3, 64, 64))
    sum(m.mean() for m in maps).backward()
    assert all(p.grad is not None for p in features.parameters())  # nothing unused: DDP needs no special flag
    assert [m.shape[1] for m in create_model("wrn_16_1", features_only=True, out_indices=(-1,))(
        torch.randn(1, 3, 16, 16))] == [64]
    assert len(create_model("parnet_tiny", features_only=True, out_indices=2)(torch.randn(1, 3, 16, 16))) == 2
    with pytest.raises(ValueError, match="out of range"):
        create_model("parnet_tiny", features_only=True, out_indices=(0, 4))
    with pytest.raises(ValueError, match="increasing"):
        create_model("parnet_tiny", features_only=True, out_indices=(2, 1))
    with pytest.raises(ValueError, match="features_only"):
        create_model("parnet_tiny", out_indices=(1, 2))


def test_feature_extractor_still_traces_for_depth():
    with torch.device("meta"):
        features = create_model("parnet_s", features_only=True)
    assert measure.depth(features) == 11  # the head conv's map: the classifier's 12 layers less the fc


# ---- detection --------------------------------------------------------------------------------------------

def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [50.0, 40.0, 120.0, 110.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[0.0, 0.0, 30.0, 40.0], [64.0, 64.0, 127.0, 127.0]]),
                "labels": torch.tensor([2, 1])}]
    return images, targets


SMALL = dict(backbone_kwargs={"width_multiplier": 0.25}, min_size=128, max_size=128)
FAST_RCNN = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=200,
                 rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)


@pytest.mark.parametrize("detector,extra,levels", [
    ("retinanet", {}, ["0", "1", "2", "p6", "p7"]),
    ("fasterrcnn", FAST_RCNN, ["0", "1", "2", "3", "pool"]),
])
def test_detector_train_step_and_inference(detector, extra, levels):
    from nondeep.detection import create_detector

    model = create_detector("parnet_s", num_classes=3, detector=detector, **SMALL, **extra)
    assert model.backbone.out_channels == 256
    with torch.no_grad():
        maps = model.backbone(torch.randn(1, 3, 128, 128))
    assert list(maps) == levels
    first = 8 if detector == "retinanet" else 4  # strides 8..128 (RetinaNet), 4..64 (Faster R-CNN)
    assert [m.shape[-1] for m in maps.values()] == [128 // (first * 2 ** i) for i in range(5)]

    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.backbone.body.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det in detections:
        assert set(det) == {"boxes", "labels", "scores"} and det["boxes"].shape[-1] == 4


def test_detector_with_other_levels_and_a_fused_backbone():
    from nondeep.detection import create_detector

    # Two backbone levels + P6, P7: four maps, so the anchors get four size levels to match.
    model = create_detector("parnet_s", num_classes=2, out_indices=(2, 3), **SMALL).eval()
    assert model.anchor_generator.num_anchors_per_location() == [9] * 4
    assert model.transform.size_divisible == math.lcm(32, model.backbone.body.model.input_divisor)
    images, _ = _batch()
    with torch.no_grad():
        assert len(model(images)) == 2
        randomize_bn(model.backbone.body)
        fused = reparameterize_model(model)
        x = torch.randn(1, 3, 128, 128)
        for a, b in zip(model.backbone(x).values(), fused.backbone(x).values()):
            assert _rel_err(b, a) < 1e-5
