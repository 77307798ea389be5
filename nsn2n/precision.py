"""Numeric precision and memory layout of the network's work: bf16 where the hardware computes it natively.

Rule: with ``mixed_precision`` the convolutions run under bf16 autocast on CUDA and on CPUs with native
bf16 instructions (AVX512-BF16 or AMX), where they are several times faster than float32; elsewhere
(older CPUs emulate bf16 slowly) they stay float32. The loss, the residual's identity path and every
output are float32 either way: the network predicts the noise, and the noisy slice it subtracts that from
is never rounded. Inputs are laid out channels-last (NHWC), the layout oneDNN and cuDNN convolve fastest.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "bf16_native", "channels_last", "precision_name"]


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions natively."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu feature probes
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def precision_name(device: torch.device, mixed_precision: bool) -> str:
    """``"bf16 autocast"`` or ``"float32"``: what :func:`autocast` gives on ``device``."""
    return "bf16 autocast" if mixed_precision and bf16_native(device) else "float32"


def autocast(device: torch.device, mixed_precision: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``mixed_precision`` and the device has native bf16; else nothing."""
    if mixed_precision and bf16_native(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D batch in channels-last memory layout (values unchanged)."""
    return x.contiguous(memory_format=torch.channels_last)
