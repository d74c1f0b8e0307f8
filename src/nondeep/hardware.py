"""What this machine's CPU computes natively: which reduced precision is worth running on it."""

from __future__ import annotations

import torch


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, which buys
    no speed, so nondeep refuses bf16 on the CPU there rather than change the numerics for nothing."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
