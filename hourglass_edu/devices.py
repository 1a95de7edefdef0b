"""The one device check: which device names the library computes on, refused before any work.

`resolve_device` turns what a user wrote (`--device`, a `device=` argument, HOURGLASS_EDU_DEVICE)
into a `torch.device`, or refuses it with a ValueError of one line. It accepts "auto" (the CUDA
GPU when torch sees one, else the CPU), "cpu", and an accelerator torch sees here: "cuda" /
"cuda:N", "mps" (Apple), "xpu" (Intel), or a backend registered under its own name through
torch's PrivateUse1 key (the test suite's simulated accelerator, "sim"). Every other type torch
can parse is refused by name: "meta" holds no data, "lazy" and "hpu" need backends this library
does not support, and an unregistered "privateuseone" has no backend at all; torch would take the
name and fail much later (after the corpus loads) with a message that names no option.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["resolve_device"]

ACCELERATORS = ("cuda", "mps", "xpu")  # device types torch ships a backend for
_CHOICES = ("use auto, cpu, or a GPU torch sees here: cuda or cuda:N (NVIDIA), mps (Apple), "
            "xpu (Intel)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> the CUDA GPU when torch sees one, else the CPU; any other name is checked (see
    the module docstring), and a GPU index past the GPUs there are is refused."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with warnings.catch_warnings():  # ("mkldnn" is deprecated: refused below anyway)
            warnings.simplefilter("ignore")
            resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):  # torch's message lists dozens of types
        raise ValueError(f"unknown device {device!r}: {_CHOICES}") from None
    kind = resolved.type
    if kind == "cpu":
        return resolved
    if kind not in ACCELERATORS and kind != _registered_backend():
        raise ValueError(f"device {str(device)!r} is not one this library computes on: "
                         f"{_CHOICES}")
    if not _available(kind):
        raise ValueError(f"device {str(device)!r} was asked for but torch sees no {kind} "
                         "device here; use cpu (or auto)")
    count = getattr(getattr(torch, kind, None), "device_count", None)
    if resolved.index is not None and callable(count) and resolved.index >= count():
        raise ValueError(f"device {str(device)!r} was asked for but torch sees {count()} "
                         f"{kind} device(s), numbered from 0")
    return resolved


def _registered_backend() -> str | None:
    """The name a PrivateUse1 backend was registered under (None while it has none)."""
    name_of = getattr(torch._C, "_get_privateuse1_backend_name", None)
    name = name_of() if callable(name_of) else "privateuseone"
    return None if name == "privateuseone" else name


def _available(kind: str) -> bool:
    """Whether torch sees a device of this type (a backend whose probe fails has none)."""
    if kind == "mps":
        probe = torch.backends.mps.is_available
    else:
        probe = getattr(getattr(torch, kind, None), "is_available", None)
    try:
        return bool(callable(probe) and probe())
    except Exception:  # a backend's own probe failing means no usable device
        return False
