"""Where and in what precision a run computes: device choice, bf16 / fp16 autocast, loss scaling.

`precision="auto"` picks what is fast *and* exact enough on the hardware at hand:

- a CUDA GPU with native bf16 (compute capability 8.0 and newer: A100, H100, RTX 30xx+) -> "bf16";
- an older CUDA GPU (T4, V100: Colab's free GPU is a T4) -> "fp16" autocast with a gradient
  scaler (fp16's narrow range needs the loss scaled up so small gradients do not round to zero);
  torch's `is_bf16_supported()` also counts slow emulation, so the capability is asked instead;
- a CPU with bf16 matrix units (Intel AMX) or AVX512-BF16 -> "bf16" (several times faster);
- any other CPU -> "fp32" (on an AVX2-only CPU bf16 matmuls are about 80x *slower* than fp32).

Weights and optimizer state always stay fp32; autocast only lowers the matmuls of the forward pass.
A name is taken as asked, with two refusals: "fp16" off CUDA (CPU fp16 autocast is slow and has
no loss scaling here), and "bf16" on a GPU without native bf16 (emulated, many times slower: use
"fp16" or "auto"). `choose_precision` is the rule as a pure function of what the hardware has.

While a run trains on CUDA, fp32 matmuls may use TF32 tensor cores (`fast_fp32_matmuls`: 10 bits
of mantissa instead of 23 inside the matmul, the default of most training code on Ampere and
newer; it matters for "fp32" runs and for the fp32 matmuls left outside autocast). It is switched
back when the run ends, so evaluation and sampling outside training stay full fp32.
"""

from __future__ import annotations

import contextlib

import torch

from hourglass_edu.training.config import PRECISIONS

__all__ = ["choose_precision", "resolve_precision"]


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


def choose_precision(precision: str, device_type: str, *, native_bf16: bool = False,
                     fast_cpu_bf16: bool = False, device_name: str = "this GPU") -> str:
    """The rule above, given what the hardware has: `native_bf16` (a CUDA GPU of compute
    capability >= 8.0) and `fast_cpu_bf16` (AMX or AVX512-BF16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA GPU (fp16 autocast on a CPU is slow and "
                         "unscaled); use 'auto', 'bf16' or 'fp32'")
    if precision == "bf16" and device_type == "cuda" and not native_bf16:
        raise ValueError(f"precision 'bf16' was asked for, but {device_name} has no native bf16 "
                         "(before compute capability 8.0 it is emulated, many times slower): "
                         "use `precision` fp16 (autocast with loss scaling) or auto")
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if native_bf16 else "fp16"
    if device_type == "cpu":
        return "bf16" if fast_cpu_bf16 else "fp32"
    return "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run will use on `device`: `choose_precision` with this machine's answers."""
    device = torch.device(device)
    on_cuda = device.type == "cuda" and precision in ("auto", "bf16")
    return choose_precision(
        precision, device.type,
        native_bf16=on_cuda and cuda_has_native_bf16(device),
        fast_cpu_bf16=device.type == "cpu" and precision == "auto" and cpu_has_fast_bf16(),
        device_name=torch.cuda.get_device_name(device) if on_cuda and torch.cuda.is_available()
        else "this GPU",
    )


def uses_tf32(device_type: str) -> bool:
    """Whether a run lets its fp32 matmuls use TF32: on CUDA, in every precision (under bf16 /
    fp16 autocast it touches only the matmuls autocast leaves in fp32; a GPU older than Ampere
    has no TF32 and ignores the setting). CPUs have none."""
    return device_type == "cuda"


@contextlib.contextmanager
def fast_fp32_matmuls(device: torch.device):
    """TF32 for fp32 matmuls while the block runs (see `uses_tf32`); the previous setting after."""
    if not uses_tf32(torch.device(device).type):
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def autocast_context(precision: str, device: torch.device):
    """Autocast for the forward pass in bf16 / fp16; nothing for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def gradient_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16 (a no-op pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
