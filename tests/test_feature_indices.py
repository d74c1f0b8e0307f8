"""nondeep.models.features as units: out_indices normalised at each edge with its exact refusal, FeatureInfo's
accessors, and what FeatureExtractor keeps, prunes and refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nondeep import create_model
from nondeep.errors import NondeepError
from nondeep.models.features import FeatureExtractor, FeatureInfo, feature_take_indices


@pytest.mark.parametrize("indices,expected", [
    (None, ([0, 1, 2, 3], 3)), (1, ([3], 3)), (4, ([0, 1, 2, 3], 3)), ((0,), ([0], 0)), ((1, 3), ([1, 3], 3)),
    ((-1,), ([3], 3)), ((-4, -2), ([0, 2], 2)), ([0, 1, 2, 3], ([0, 1, 2, 3], 3))])
def test_indices_are_normalised(indices, expected):
    assert feature_take_indices(4, indices) == expected


@pytest.mark.parametrize("indices", [0, 5, -1])
def test_a_count_must_be_between_one_and_the_levels(indices):
    with pytest.raises(ValueError) as err:
        feature_take_indices(4, indices)
    assert str(err.value) == f"out_indices={indices} asks for the last {indices} levels of 4"


@pytest.mark.parametrize("indices", [(4,), (-5,), (0, 4), ()])
def test_an_index_out_of_range_or_none_is_refused(indices):
    with pytest.raises(ValueError) as err:
        feature_take_indices(4, indices)
    assert str(err.value) == (f"out_indices {tuple(indices)} out of range: this model has 4 feature levels, 0..3 "
                              "(negative indices count from the end)")


@pytest.mark.parametrize("indices", [(1, 1), (2, 1), (0, -4)])
def test_indices_must_increase(indices):
    with pytest.raises(ValueError) as err:
        feature_take_indices(4, indices)
    assert str(err.value) == (f"out_indices {tuple(indices)} must be increasing, so that the maps come in "
                              "non-decreasing stride")


def test_feature_info_accessors():
    info = FeatureInfo([dict(num_chs=8, reduction=2, module="a"), dict(num_chs=16, reduction=4, module="b")])
    assert (info.channels(), info.reduction(), info.module_name()) == ([8, 16], [2, 4], ["a", "b"])


def test_the_extractor_keeps_the_chosen_levels_and_prunes_what_they_do_not_need():
    model = create_model("wrn_16_1", in_chans=1)
    model.pretrained_cfg = {"mean": (0.5,)}
    features = FeatureExtractor(model, out_indices=(0, 1))
    assert features.out_indices == (0, 1) and features.out_channels == [16, 32]
    assert list(features.feature_info) == [dict(num_chs=16, reduction=1, module="layer1", index=0),
                                           dict(num_chs=32, reduction=2, module="layer2", index=1)]
    assert isinstance(model.layer3, nn.Identity) and isinstance(model.fc, nn.Identity)  # pruned
    assert features.pretrained_cfg == {"mean": (0.5,)} and features.pretrained_cfg is not model.pretrained_cfg
    maps = features(torch.randn(2, 1, 8, 8))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 8, 8), (2, 32, 4, 4)]


def test_the_extractor_can_leave_the_model_whole():
    model = create_model("wrn_16_1", in_chans=1)
    features = FeatureExtractor(model, out_indices=(0,), prune=False)
    assert isinstance(model.fc, nn.Linear) and not isinstance(model.layer3, nn.Identity)
    assert [tuple(m.shape) for m in features(torch.randn(1, 1, 8, 8))] == [(1, 16, 8, 8)]
    assert FeatureExtractor(create_model("wrn_16_1")).pretrained_cfg == dict(create_model("wrn_16_1").pretrained_cfg)


def test_an_unpruned_extractor_stops_after_the_last_level_it_returns():
    """Nothing past the deepest requested level runs: not the later groups, not the head."""
    model = create_model("wrn_16_1", in_chans=1)
    ran = []
    for name in ("layer2", "layer3", "bn", "fc"):
        getattr(model, name).register_forward_hook(lambda module, args, out, name=name: ran.append(name))
    FeatureExtractor(model, out_indices=(0,), prune=False)(torch.randn(1, 1, 8, 8))
    assert ran == []
    FeatureExtractor(model, out_indices=(0, 1), prune=False)(torch.randn(1, 1, 8, 8))
    assert ran == ["layer2"]


def test_a_model_without_a_pretrained_cfg_gets_an_empty_one():
    model = create_model("wrn_16_1", in_chans=1)
    del model.pretrained_cfg
    assert FeatureExtractor(model).pretrained_cfg == {}


def test_a_model_without_features_is_one_line():
    with pytest.raises(NondeepError) as err:
        FeatureExtractor(nn.Linear(2, 2))
    assert str(err.value) == ("Linear has no feature_info / forward_intermediates: features_only works for "
                              "nondeep's ParNet and WideResNet families (and timm: models, which timm extracts "
                              "itself)")


def test_a_model_with_only_half_of_the_feature_contract_is_refused():
    no_info = create_model("wrn_16_1", in_chans=1)
    del no_info.feature_info                      # forward_intermediates without the levels' description
    levels_only = nn.Conv2d(1, 4, 3)
    levels_only.feature_info = [dict(num_chs=4, reduction=1, module="")]  # no forward_intermediates
    for model in (no_info, levels_only):
        with pytest.raises(NondeepError, match="has no feature_info / forward_intermediates"):
            FeatureExtractor(model)
