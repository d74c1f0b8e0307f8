"""Measured depth on any traceable model, FLOPs, latency, the registry and the command line."""

import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

import nondeep
from nondeep import UnknownModelError, create_model, list_models, measure
from nondeep.cli import main


@pytest.mark.parametrize("builder,expected", [(torchvision.models.resnet18, 18), (torchvision.models.resnet50, 50),
                                              (torchvision.models.vgg11, 11)])
def test_depth_of_torchvision_models(builder, expected):
    with torch.device("meta"):
        model = builder()
    assert measure.depth(model) == expected


class ShapeBranching(nn.Module):
    """torch.fx cannot trace a Python `if` on a shape; depth falls back to torch.export."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        if x.shape[-1] > 4:
            x = self.b(self.a(x))
        return self.c(x.mean((2, 3)))


def test_depth_falls_back_to_export_for_untraceable_models():
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(ShapeBranching())
    assert measure.depth(ShapeBranching(), input_size=(3, 16, 16)) == 3


def test_depth_counts_the_longest_branch_not_the_sum():
    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.long = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1))
            self.short = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.long(x) + self.short(x)

    assert measure.depth(TwoBranches()) == 3


def test_flops_params_and_latency():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert measure.count_flops(model, (3, 2, 2)) == 2 * 12 * 5
    assert measure.count_flops(model, (3, 2, 2), batch_size=4) == 4 * 2 * 12 * 5
    assert measure.count_params(model) == 12 * 5 + 5
    lat = measure.latency(model, (3, 2, 2), batch_size=2, warmup=1, repeats=5)
    assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms and lat.samples_per_sec > 0
    assert measure.matmul_peak_gflops(size=256, repeats=3) > 0


def test_registry_names_filter_and_unknown_model():
    names = list_models()
    for required in ["parnet_s", "parnet_m", "parnet_l", "parnet_xl", "parnet_tiny", "wrn_28_10", "wrn_16_8",
                     "preact_resnet_164", "preact_resnet_1001", "mimic_snn_8k"]:
        assert required in names and nondeep.is_model(required)
    assert list_models("parnet_*") and all(n.startswith("parnet_") for n in list_models("parnet_*"))
    with pytest.raises(UnknownModelError, match="did you mean parnet_s"):
        create_model("parnet_ss")
    assert not nondeep.is_model("resnet9000")


def test_create_model_drops_none_kwargs_and_rejects_pretrained():
    model = create_model("parnet_tiny", num_classes=None, drop_rate=None)
    assert model.num_classes == 10 and model.pretrained_cfg["architecture"] == "parnet_tiny"
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("parnet_tiny", pretrained=True)


def test_cli_models_table(capsys):
    assert main(["models", "parnet_*"]) == 0
    out = capsys.readouterr().out
    assert "parnet_s " in out and "| 12 " in out and "19.18" in out


def test_cli_info(capsys):
    assert main(["info", "parnet_tiny", "--input-size", "1", "28", "28", "--fused", "--latency"]) == 0
    out = capsys.readouterr().out
    assert "depth: 12" in out and "latency_ms_bs1" in out and "1x28x28" in out


def test_cli_unknown_model_is_one_line_and_nonzero():
    proc = subprocess.run([sys.executable, "-m", "nondeep.cli", "info", "wrn_28_1O"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model 'wrn_28_1O'" in proc.stderr
    assert "did you mean" in proc.stderr
