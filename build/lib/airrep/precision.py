"""Which floating-point precision a device computes fastest in, for ``precision: auto``.

bf16 is several times faster than fp32 where the hardware has bf16 arithmetic (GPUs with
bf16 support; CPUs with AVX512-BF16 or AMX tiles), and far slower where it has not: on an
AVX2-only CPU torch emulates bf16 matrix products, measured at 0.27 GFLOP/s against fp32's
70 on 2 cores of an AMD EPYC without AVX512, so a bf16 default there makes every fine-tune
and encoding hundreds of times slower. ``auto`` asks the hardware instead of assuming it.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["auto", "bf16", "fp32", "fp16"]


def cpu_has_fast_bf16() -> bool:
    """True when torch's CPU kernels can run bf16 matrix products natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device | str | None = None) -> str:
    """``auto`` → ``bf16`` where ``device`` has fast bf16 arithmetic, else ``fp32``; any other
    value is returned unchanged. ``device`` defaults to CUDA when present, else the CPU."""
    if precision != "auto":
        return precision
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
