"""Where and in what precision a run computes: device choice, bf16 / fp16 autocast, loss scaling.

`precision="auto"` picks what is fast *and* exact enough on the hardware at hand:

- a CUDA GPU with native bf16 (compute capability 8.0 and newer: A100, H100, RTX 30xx+) -> "bf16";
- an older CUDA GPU (T4, V100: Colab's free GPU is a T4) -> "fp16" autocast with a gradient
  scaler (fp16's narrow range needs the loss scaled up so small gradients do not round to zero);
  torch's `is_bf16_supported()` also counts slow emulation, so the capability is asked instead;
- a CPU with bf16 matrix units (Intel AMX) or AVX512-BF16 -> "bf16" (several times faster);
- any other CPU -> "fp32" (on an AVX2-only CPU bf16 matmuls are about 80x *slower* than fp32).

Weights and optimizer state always stay fp32; autocast only lowers the matmuls of the forward pass.
"""

from __future__ import annotations

import contextlib

import torch

from hourglass_edu.training.config import PRECISIONS

__all__ = [
    "autocast_context",
    "cpu_has_fast_bf16",
    "cuda_has_native_bf16",
    "gradient_scaler",
    "resolve_device",
    "resolve_precision",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the GPU when torch sees one, else the CPU; a named device is checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r} ({error}); use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device='cpu'")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix units (AMX) or bf16 vector instructions (AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a private probe: never let it break training
            pass
    return False


def cuda_has_native_bf16(device: torch.device) -> bool:
    """bf16 tensor cores arrived with compute capability 8.0 (Ampere); older GPUs emulate it."""
    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run will use: `precision` itself, or for "auto" the rule above."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA GPU (fp16 autocast on a CPU is slow and "
                         "unscaled); use 'auto', 'bf16' or 'fp32'")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast_context(precision: str, device: torch.device):
    """Autocast for the forward pass in bf16 / fp16; nothing for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def gradient_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16 (a no-op pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
