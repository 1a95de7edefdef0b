"""A simulated accelerator, "sim": a device that is not the CPU, backed by CPU memory.

Why: every test and notebook run of this project happens on a CPU, where `DEVICE == "cpu"` hides
every forgotten `.to(device)` and `.cpu()`. On "sim" such code fails the way it fails on CUDA:

- an op mixing a sim tensor with a CPU tensor raises "Expected all tensors to be on the same
  device" (0-dim CPU tensors may mix, and CPU index tensors may index, as on CUDA);
- `.numpy()`, `np.asarray` and Matplotlib on a sim tensor raise (torch's own check: only CPU
  tensors convert), so a figure fed without `.cpu()` fails;
- `.to("sim")` / `.cpu()` copy; `.item()` / `.tolist()` work (they do on CUDA);
- factory calls with `device="sim"` (or under `with torch.device("sim")`) make sim tensors;
- `nn.Module.to`, autograd, AdamW (foreach and fused), `torch.manual_seed` work;
- a random op on a sim tensor refuses a CPU `torch.Generator`, as CUDA does.

How: PyTorch's PrivateUse1 dispatch key, renamed "sim" with the Python-side backend registration
torch provides (`_setup_privateuseone_for_python_backend`: device guard, hooks, `torch.sim`),
plus one tensor wrapper subclass, `SimTensor`, whose device is sim:0 and which holds an ordinary
CPU tensor. Every aten op on a SimTensor reaches `__torch_dispatch__`, which checks placement,
runs the op on the CPU tensors inside and wraps the results. Factory ops (`empty`,
`empty_strided`) are registered for the PrivateUse1 key, so `torch.zeros(..., device="sim")`
lands here too.

What it does not prove: CUDA numerics (the arithmetic is the CPU's), kernels, streams and
synchronization, autocast or GradScaler on CUDA (on sim the library trains in fp32), memory use,
`torch.compile`, NCCL. Known gaps: `torch.Generator(device="sim")` cannot be made (a Python
backend cannot provide a device generator); `torch.save` of a sim tensor stores a CPU tensor
(CUDA would store a cuda one); tensors cannot be shared across processes (no torchrun with
sim gradients through gloo); an op that changes a tensor's shape in place (`resize_`, `t_`,
`unsqueeze_`, a resizing `out=`) raises NotImplementedError, since a wrapper's shape is fixed.

Use: `install()` once per process before the first "sim" tensor. For subprocesses (notebook
kernels, CLI commands, torchrun workers) put tests/simulated_device/activate on PYTHONPATH and
set HOURGLASS_EDU_SIMULATED_DEVICE=1: its sitecustomize.py calls install() at start-up.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_map

NAME = "sim"
DEVICE = "sim:0"  # a string: torch.device("sim") is known only after install()
ENV_SWITCH = "HOURGLASS_EDU_SIMULATED_DEVICE"

_installed = False


class SimTensor(torch.Tensor):
    """A tensor that says it lives on sim:0 and keeps its values in a CPU tensor, `_cpu`."""

    _cpu: torch.Tensor

    @staticmethod
    def __new__(cls, cpu_tensor: torch.Tensor):
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, cpu_tensor.shape, strides=cpu_tensor.stride(),
            storage_offset=cpu_tensor.storage_offset(), dtype=cpu_tensor.dtype,
            layout=cpu_tensor.layout, device=DEVICE, requires_grad=cpu_tensor.requires_grad,
        )
        wrapper._cpu = cpu_tensor
        return wrapper

    def __repr__(self, *, tensor_contents=None):
        # torch's printer loops on wrapper subclasses; print the values the way CUDA tensors print.
        text = repr(self._cpu.detach())
        return f"{text[:-1]}, device='{DEVICE}')" if text.endswith(")") else text

    def __format__(self, spec):
        return self.item().__format__(spec) if self.dim() == 0 else repr(self)

    def numpy(self, *, force=False):
        # CUDA's words: a device tensor converts to NumPy only after .cpu().
        raise TypeError(f"can't convert {DEVICE} device type tensor to numpy. Use Tensor.cpu() "
                        "to copy the tensor to host memory first.")

    def __array__(self, dtype=None, copy=None):
        return self.numpy()

    def tolist(self):
        # torch refuses tolist() on any tensor subclass; on CUDA it copies to the host and works.
        return self.cpu().tolist()

    def untyped_storage(self):
        # The memory behind the values (a wrapper has none of its own), so code that tells
        # storages apart by data_ptr (saved-activation counting) sees real, distinct storages.
        return self._cpu.untyped_storage()

    def __reduce_ex__(self, protocol):
        # torch.save of a sim tensor stores its CPU copy, so checkpoints load with weights_only
        # anywhere (a real GPU's tensor would be stored as cuda and need map_location).
        return self._cpu.detach().clone().__reduce_ex__(protocol)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        _check_placement(func, args, kwargs)
        if func is torch.ops.aten._to_copy.default:
            return _to_copy(*args, **kwargs)
        cpu_args, cpu_kwargs = tree_map(_unwrap, (args, kwargs))
        result = func(*cpu_args, **cpu_kwargs)
        # An in-place or out= op returns the very tensor it wrote into: give back that SimTensor.
        written = _written_arguments(func, args, kwargs)
        if written is not None:
            for tensor in written if isinstance(written, tuple) else (written,):
                if isinstance(tensor, SimTensor) and tensor.shape != tensor._cpu.shape:
                    # A wrapper's shape is fixed when it is made: say so instead of going wrong.
                    raise NotImplementedError(f"{func} changed the shape of a sim tensor in place, "
                                              "which the simulated device cannot follow")
            return written
        return tree_map(_wrap, result)


def _unwrap(value):
    return value._cpu if isinstance(value, SimTensor) else value


def _wrap(value):
    if isinstance(value, torch.Tensor) and value.device.type == "cpu":
        return SimTensor(value)
    return value


# Ops that CUDA lets take CPU tensors beside device tensors: copies across devices, and CPU
# index tensors (indexing a cuda tensor with CPU indices is allowed).
_CROSS_DEVICE_OPS = {"copy_", "_copy_from", "_to_copy", "index", "index_put_", "index_put",
                     "_index_put_impl_"}


def _check_placement(func, args, kwargs) -> None:
    """Raise as CUDA does when a sim tensor meets a CPU tensor (or a CPU generator)."""
    name = func._schema.name.split("::")[-1]
    leaves, _ = tree_flatten((args, kwargs))
    for leaf in leaves:
        if isinstance(leaf, torch.Generator) and leaf.device.type != NAME:
            raise RuntimeError(f"Expected a '{NAME}' device type for generator but found "
                               f"'{leaf.device.type}' (in {func})")
    if name in _CROSS_DEVICE_OPS:
        return
    for leaf in leaves:
        if (isinstance(leaf, torch.Tensor) and not isinstance(leaf, SimTensor)
                and leaf.device.type != NAME and leaf.dim() > 0):
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two devices, "
                f"{DEVICE} and {leaf.device}! (in {func}; a tensor of shape "
                f"{tuple(leaf.shape)} is on {leaf.device}: move it with .to(device))"
            )


def _to_copy(source: SimTensor, **kwargs):
    """`.to(...)` / `.cpu()` of a sim tensor: a CPU result when asked for the CPU, else sim."""
    target = kwargs.pop("device", None)
    copied = torch.ops.aten._to_copy.default(source._cpu, **kwargs)
    if target is not None and torch.device(target).type != NAME:
        return copied.to(target)
    return SimTensor(copied)


def _written_arguments(func, args, kwargs):
    """The argument(s) an in-place / out= op writes and returns, or None for a functional op."""
    schema = func._schema
    returned = []
    for result in schema.returns:
        if result.alias_info is None or not result.alias_info.is_write:
            return None
        for position, argument in enumerate(schema.arguments):
            if argument.alias_info is not None and argument.alias_info.is_write and (
                    argument.alias_info.before_set == result.alias_info.before_set):
                value = kwargs.get(argument.name) if argument.kwarg_only or position >= len(
                    args) else args[position]
                returned.append(value)
                break
        else:
            return None
    if not returned:
        return None
    return returned[0] if len(returned) == 1 else tuple(returned)


class _SimModule:
    """`torch.sim`: what torch asks a device module for (availability, count, seeding)."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def _is_in_bad_fork() -> bool:
        return False

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        # Random ops on sim draw from torch's CPU generator, which torch.manual_seed seeds.
        del seed

    @staticmethod
    def synchronize(device=None) -> None:
        del device  # the CPU finishes every op before returning

    @staticmethod
    def get_amp_supported_dtype() -> list[torch.dtype]:
        return [torch.float16, torch.bfloat16]


def _empty(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return SimTensor(torch.empty(size, dtype=dtype, layout=layout,
                                 memory_format=memory_format or torch.contiguous_format))


def _empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    return SimTensor(torch.empty_strided(size, stride, dtype=dtype, layout=layout))


def _copy_from(source, destination, non_blocking=False):
    """copy_ between sim and CPU when torch calls it with Python dispatch turned off (as
    torch.tensor(..., device="sim") does): copy the values inside, return the destination."""
    _unwrap(destination).copy_(_unwrap(source))
    return destination


def _cpu_factory(op):
    """A factory kernel that builds on the CPU and wraps: for the factories (arange, linspace,
    randperm) that make an empty tensor and then resize it, which a wrapper cannot follow."""
    def factory(*args, **kwargs):
        kwargs["device"] = torch.device("cpu")
        return SimTensor(op(*args, **kwargs))
    return factory


_RESIZING_FACTORIES = ("arange", "arange.start", "arange.start_step", "linspace", "logspace",
                       "randperm", "randperm.generator", "range", "range.step")


def install() -> torch.device:
    """Register the "sim" device in this process (idempotent); returns sim:0."""
    global _installed, _factory_library
    if _installed:
        return torch.device(DEVICE)
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    _setup_privateuseone_for_python_backend(rename=NAME, backend_module=_SimModule())
    # Factory ops with device="sim" arrive at the PrivateUse1 key (no SimTensor argument yet):
    # every other factory (zeros, arange, randn, tensor(..., device=)) builds on these two.
    _factory_library = torch.library.Library("aten", "IMPL")
    _factory_library.impl("empty.memory_format", _empty, "PrivateUse1")
    _factory_library.impl("empty_strided", _empty_strided, "PrivateUse1")
    _factory_library.impl("_copy_from", _copy_from, "PrivateUse1")
    for qualified in _RESIZING_FACTORIES:
        name, _, overload = qualified.partition(".")
        op = getattr(getattr(torch.ops.aten, name), overload or "default")
        _factory_library.impl(qualified, _cpu_factory(op), "PrivateUse1")
    _installed = True
    return torch.device(DEVICE)


_factory_library = None


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables for a subprocess that must run on sim (a notebook kernel, a CLI
    command, torchrun): the start-up hook on PYTHONPATH, its switch, and HOURGLASS_EDU_DEVICE=sim
    (the device `hourglass_edu.course.default_device()` gives every notebook)."""
    import os
    from pathlib import Path

    env = dict(os.environ if base is None else base)
    hook = str(Path(__file__).resolve().parent / "activate")
    repository = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (hook, repository, env.get("PYTHONPATH", "")) if part)
    env[ENV_SWITCH] = "1"
    env["HOURGLASS_EDU_DEVICE"] = NAME
    return env
