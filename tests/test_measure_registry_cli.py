"""Measured depth on any traceable model, FLOPs, latency, the registry and the command line."""

import statistics
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
    with pytest.raises(torch.fx.proxy.TraceError, match="cannot be used as inputs to control flow"):
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


class _Clock:
    """perf_counter for measure.py: each timed call takes the next of `durations_ms`."""

    def __init__(self, durations_ms):
        self.durations, self.now, self.started = list(durations_ms), 0.0, False

    def __call__(self):
        if self.started:
            self.now += self.durations.pop(0) / 1000.0
        self.started = not self.started
        return self.now


def test_latency_and_roof_are_the_median_and_deciles_of_the_timed_calls(monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    durations = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 9.0, 7.0, 8.0]  # ms, in call order
    monkeypatch.setattr(measure.time, "perf_counter", _Clock(durations))
    lat = measure.latency(model, (3, 2, 2), batch_size=2, warmup=1, repeats=10)
    deciles = statistics.quantiles(durations, n=10)
    assert (lat.median_ms, lat.p10_ms, lat.p90_ms) == pytest.approx((5.5, deciles[0], deciles[-1]))  # 5.5, 1.1, 9.9
    assert lat.repeats == 10
    assert lat.samples_per_sec == pytest.approx(1000 * 2 / 5.5)
    monkeypatch.setattr(measure.time, "perf_counter", _Clock([4.0, 2.0, 3.0]))
    assert measure.matmul_peak_gflops(size=64, repeats=3) == pytest.approx(2 * 64 ** 3 / 0.003 / 1e9)


def test_registry_names_filter_and_unknown_model():
    names = list_models()
    for required in ["parnet_s", "parnet_m", "parnet_l", "parnet_xl", "parnet_tiny", "wrn_28_10", "wrn_16_8",
                     "preact_resnet_164", "preact_resnet_1001", "mimic_snn_8k"]:
        assert required in names and nondeep.is_model(required)
    assert list_models("parnet_*") and all(n.startswith("parnet_") for n in list_models("parnet_*"))
    with pytest.raises(UnknownModelError, match="did you mean parnet_s"):
        create_model("parnet_ss")
    assert not nondeep.is_model("resnet9000")


def test_the_command_line_starts_without_torchvision_scipy_or_matplotlib():
    """Each costs 1-2.5 s at every `nondeep` call: a family, dataset or lab that needs one imports it on use. A
    lazily registered model is listed before its module is imported, and builds when asked for."""
    script = ("import sys; import nondeep.cli, nondeep.train, nondeep.data; nondeep.cli.build_parser()\n"
              "heavy = [m for m in ('torchvision', 'scipy', 'matplotlib', 'torch._dynamo') if m in sys.modules]\n"
              "assert not heavy, heavy\n"
              "assert 'resnet18_small_image' in nondeep.list_models() and 'nondeep.models.resnet_small' not in sys.modules\n"
              "model = nondeep.create_model('resnet18_small_image', num_classes=3)\n"
              "assert type(model).__name__ == 'SmallImageResNet' and model.fc.out_features == 3\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_lazy_name_its_module_does_not_register_is_an_error(monkeypatch):
    from nondeep.models import _registry

    monkeypatch.setitem(_registry._lazy, "not_in_json", "json")
    assert "not_in_json" in list_models()
    with pytest.raises(RuntimeError, match="json was to register 'not_in_json'"):
        create_model("not_in_json")


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
    # two forms keep it short: the choice among every form is optimize's test (tests/test_inference.py)
    assert main(["info", "parnet_tiny", "--input-size", "1", "28", "28", "--fused", "--latency",
                 "--forms", "eager", "channels_last"]) == 0
    out = capsys.readouterr().out
    assert "depth: 12" in out and "latency_ms_bs1" in out and "1x28x28" in out
    table = out.split("| form", 1)[1]
    assert "tried" in out and "eager" in table and "onnxruntime" not in table and "streams" not in table


def test_cli_unknown_model_is_one_line_and_nonzero():
    proc = subprocess.run([sys.executable, "-m", "nondeep.cli", "info", "wrn_28_1O"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model 'wrn_28_1O'" in proc.stderr
    assert "did you mean" in proc.stderr
