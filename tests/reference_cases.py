"""The cases whose outputs are pinned in tests/reference/: one model of every family, built from a seeded
initialisation with non-trivial BatchNorm statistics, run in eval mode on a seeded input.

scripts/make_reference_outputs.py writes the files from these definitions; tests/test_reference_outputs.py
rebuilds each model the same way and compares. Only the logits are stored (a few KB), never weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nondeep import create_model, reparameterize_model

REFERENCE_DIR = Path(__file__).parent / "reference"


@dataclass(frozen=True)
class Case:
    name: str                       # file stem in tests/reference/
    model: str                      # registered name
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 32, 32)
    fused: bool = False             # reparameterize before the forward pass
    batch: int = 2
    seed: int = 0


CASES = [
    # ParNet-S in the ImageNet form at a reduced input (any multiple of 32 runs the same layers).
    Case("parnet_s", "parnet_s", input_size=(3, 64, 64)),
    Case("parnet_s_fused", "parnet_s", input_size=(3, 64, 64), fused=True),
    Case("parnet_small_image_s", "parnet_small_image_s"),
    Case("parnet_small_image_s_fused", "parnet_small_image_s", fused=True),
    Case("parnet_tiny", "parnet_tiny", {"in_chans": 1}, (1, 28, 28)),
    Case("parnet_tiny_fused", "parnet_tiny", {"in_chans": 1}, (1, 28, 28), fused=True),
    # The ablation forms: RepVGG blocks (the identity BN folds too), plain blocks, one and four streams.
    Case("parnet_tiny_rep_fused", "parnet_tiny", {"block_type": "rep"}, fused=True),
    Case("parnet_tiny_plain", "parnet_tiny", {"block_type": "plain"}),
    Case("parnet_tiny_1_stream", "parnet_tiny", {"num_streams": 1}),
    Case("parnet_tiny_4_streams_fused", "parnet_tiny", {"num_streams": 4}, fused=True),
    Case("wrn_16_2", "wrn_16_2"),
    Case("wrn_11_2_bottleneck", "wrn_11_2", {"block": "bottleneck"}),
    Case("preact_resnet_20", "preact_resnet_20"),
    Case("resnet18_small_image", "resnet18_small_image"),
    Case("mimic_snn_1k", "mimic_snn_1k", input_size=(1, 28, 28)),
    Case("mimic_cnn_8k", "mimic_cnn_8k", input_size=(1, 28, 28)),
]


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (as RepVGG's verify does), so that a BN used in the
    wrong place, or folded wrongly, changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def build(case: Case) -> nn.Module:
    """The case's model: torch.manual_seed(seed) then the registered builder's own initialisation, then
    seeded BN statistics; eval mode, fused when the case says so."""
    torch.manual_seed(case.seed)
    model = randomize_bn(create_model(case.model, **case.kwargs), case.seed + 1).eval()
    return reparameterize_model(model) if case.fused else model


def inputs(case: Case) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + case.seed)
    return torch.randn(case.batch, *case.input_size, generator=g)


@torch.no_grad()
def outputs(case: Case) -> torch.Tensor:
    return build(case)(inputs(case))
