"""A simulated CUDA device on the CPU, for running the logic of the CUDA tests where no GPU exists.

The GPU tests have failed on test bugs a CPU run cannot show — a `cu_seqlens` built on the host while the tokens
were on the GPU, a host->device copy per step — because on a CPU-only machine every tensor is on the same device.
`SimulatedCuda` (a `TorchFunctionMode`) gives each tensor a simulated location, host or device, and follows it
through every torch call:

* `SIM_DEVICE` (`cuda:0`) stands for the GPU: a factory call with a CUDA device, `.to(SIM_DEVICE)` or `.cuda()`
  puts its result (a real CPU tensor) "on the device"; an op's result is on the device when one of its tensor
  arguments is. A device tensor reports `cuda:0` as its `.device` — so `torch.zeros(n, device=x.device)` lands on
  the device, code that branches on `device.type` takes its CUDA branch, and device-agreement checks see the
  mismatch CUDA would. `.is_cuda` stays False (the kernels are CPU ones), and `torch.cuda.synchronize` is a
  recorded no-op.
* An op mixing device tensors with host tensors of more than one element raises `SimulatedDeviceError`, as CUDA
  raises "Expected all tensors to be on the same device" (host 0-d tensors are allowed, as on CUDA; indexing and
  copies are allowed, as on CUDA).
* What would synchronise with the host on CUDA (`torch.cuda.set_sync_debug_mode("warn")` counts these) is recorded
  in `syncs`: reading a device tensor (`.item()`, `.tolist()`, `bool()`, `int()`, `float()`, `.cpu()`,
  `.numpy()`), a blocking host->device copy (`.to(device)`, `torch.tensor(values, device=...)`, `copy_`), ops
  whose output size depends on device values (`nonzero`, boolean-mask indexing, `unique`, `masked_select`,
  `repeat_interleave` without `output_size`, `equal`), and a `dvg` op called with `validate=True` on device tensors
  (its content checks read `cu_seqlens` back). `torch.cuda.set_sync_debug_mode("warn")` / `("error")` is emulated:
  each such call then warns / raises as on a GPU, so a test counting sync warnings runs unchanged.

Limits: the custom `dvg` ops run as black boxes (their arguments are checked, their bodies run on the real CPU
tensors, so "auto" picks the C++ / torch kernels, and a Triton launch inside them runs in the interpreter);
`torch.cuda.is_available()` stays False, so code gated on it takes its CPU path; `torch.cuda.device(...)` is a
no-op guard; `torch.compile`d callables run with the simulation suspended (Dynamo cannot trace a Python
TorchFunctionMode), their outputs placed like their inputs; CUDA graphs, streams and generators are not simulated.
The sync counts are meant for differences (12 vs 20 steps; before vs after a call), not absolute numbers: e.g. the
host->device copy diffusers makes for noise from a CPU generator is counted, its exact number on a GPU may differ.
"""
from __future__ import annotations

import contextlib
import os
import traceback
import warnings
from typing import Any, Iterable, List, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

SIM_DEVICE = torch.device("cuda", 0)
_TAG = "_dvg_sim_on_device"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.arange, torch.linspace, torch.logspace,
              torch.rand, torch.randn, torch.randint, torch.randperm, torch.eye, torch.empty_strided,
              torch.scalar_tensor, torch.tensor, torch.as_tensor, torch.from_numpy, torch.asarray}
# factories whose data come from the host (a Python list, a NumPy array): a copy when they land on the device
_HOST_DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}
_LIKE = {torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like, torch.rand_like, torch.randn_like,
         torch.randint_like}
_NEW = {torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full,
        torch.Tensor.new_tensor, torch.Tensor.new_empty_strided}
_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
          torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.__complex__, torch.Tensor.numpy}
_SIZE_FROM_VALUES = {torch.nonzero, torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select,
                     torch.unique, torch.Tensor.unique, torch.unique_consecutive, torch.equal, torch.Tensor.equal,
                     torch.argwhere, torch.Tensor.argwhere, torch.Tensor.nonzero_static}
# calls that may mix host and device tensors on CUDA: indices, copies, moves, printing
_MIX_OK = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put,
           torch.Tensor.copy_, torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.__repr__,
           torch.Tensor.__format__, torch.Tensor.__str__, torch.Tensor.type, torch.Tensor.__reduce_ex__,
           torch.Tensor.__deepcopy__, torch.Tensor.set_, torch.Tensor.__len__, torch.Tensor.__iter__,
           torch._has_compatible_shallow_copy_type, torch.is_same_size, torch.Tensor.is_set_to}


_ACTIVE: List["SimulatedCuda"] = []


def active() -> "SimulatedCuda":
    """The innermost SimulatedCuda in force (for tests that count its syncs)."""
    if not _ACTIVE:
        raise RuntimeError("no SimulatedCuda is active")
    return _ACTIVE[-1]


class SimulatedDeviceError(RuntimeError):
    """An op got device and host tensors together (CUDA: "Expected all tensors to be on the same device")."""


def on_device(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _TAG, False)


def _mark(t: Any, device_side: bool) -> Any:
    if isinstance(t, torch.Tensor):
        try:
            setattr(t, _TAG, device_side)
        except (AttributeError, RuntimeError):  # e.g. tensors of a C++ subclass without a __dict__
            pass
    return t


def _is_sim(device: Any) -> bool:
    if device is None or isinstance(device, (int, torch.dtype)):
        return False
    try:
        return torch.device(device).type == "cuda"
    except (TypeError, RuntimeError):
        return False


def _getter(func, name: str) -> bool:
    return getattr(func, "__self__", None) is torch._C.TensorBase.__dict__.get(name)


def _where() -> str:
    """The innermost frames of the repository (tests or package) and of diffusers on the current stack."""
    frames = traceback.extract_stack()[:-3]
    ours = [f for f in frames if f.filename.startswith(_REPO) and os.path.basename(f.filename) != "_cuda_sim.py"
            and ".venv" not in f.filename]
    theirs = [f for f in frames if "diffusers" in f.filename]
    parts = [f"{os.path.relpath(f.filename, _REPO)}:{f.lineno} ({f.name})" for f in ours[-1:]]
    parts += [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} ({f.name})" for f in theirs[-1:]]
    return " <- ".join(parts) or "?"


class SimulatedCuda(TorchFunctionMode):
    """See the module docstring. `syncs` lists (kind, where) of every simulated synchronising call."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: List[tuple] = []
        self.debug_mode = 0  # torch.cuda.set_sync_debug_mode's, emulated

    def __enter__(self):
        self._compile = torch.compile
        torch.compile = self._compile_outside
        self._patched = {name: getattr(torch.cuda, name) for name in
                         ("synchronize", "current_device", "device", "set_sync_debug_mode", "get_sync_debug_mode")}
        torch.cuda.synchronize = lambda device=None: self._sync("torch.cuda.synchronize")
        torch.cuda.current_device = lambda: 0
        torch.cuda.device = lambda device=None: contextlib.nullcontext()  # the launchers' device guard
        torch.cuda.set_sync_debug_mode = self._set_sync_debug_mode
        torch.cuda.get_sync_debug_mode = lambda: self.debug_mode
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        for name, value in self._patched.items():
            setattr(torch.cuda, name, value)
        torch.compile = self._compile
        return super().__exit__(*exc)

    def _compile_outside(self, model=None, **kwargs):
        """torch.compile whose compiled calls run with the simulation suspended (Dynamo does not trace through a
        Python TorchFunctionMode); their outputs are on the device when an input was."""
        if model is None:
            return lambda fn: self._compile_outside(fn, **kwargs)
        compiled = self._compile(model, **kwargs)

        def call(*args, **call_kwargs):
            side = any(on_device(t) for t in tree_flatten((args, call_kwargs))[0])
            with _suspended():
                out = compiled(*args, **call_kwargs)
            return tree_map(lambda t: _mark(t, side) if isinstance(t, torch.Tensor) else t, out)
        return call

    def _set_sync_debug_mode(self, debug_mode) -> None:
        modes = {"default": 0, "warn": 1, "error": 2}
        if debug_mode not in modes and debug_mode not in modes.values():
            raise RuntimeError("invalid value of debug_mode, expected one of `default`, `warn`, `error`")
        self.debug_mode = modes.get(debug_mode, debug_mode)

    def _sync(self, kind: str) -> None:
        where = _where()
        self.syncs.append((kind, where))
        # as torch.cuda.set_sync_debug_mode("warn" / "error") reports a synchronising call on a GPU
        if self.debug_mode == 1:
            warnings.warn(f"called a synchronizing CUDA operation (simulated: {kind} at {where})", UserWarning)
        elif self.debug_mode == 2:
            raise RuntimeError(f"called a synchronizing CUDA operation (simulated: {kind} at {where})")

    def sync_count(self) -> int:
        return len(self.syncs)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _getter(func, "device"):
            return SIM_DEVICE if on_device(args[0]) else func(*args, **kwargs)
        if _getter(func, "data") and hasattr(func, "__name__") and func.__name__ == "__set__":
            func(*args, **kwargs)
            _mark(args[0], on_device(args[1]))
            return None
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        dev = [t for t in tensors if on_device(t)]
        if func in _FACTORIES:
            to_device = _is_sim(kwargs.get("device"))
            out = func(*args, **_host_device(kwargs))
            if to_device and func in _HOST_DATA_FACTORIES:
                self._sync(f"host->device copy ({func.__name__})")
            return tree_map(lambda t: _mark(t, to_device), out)
        if func in _LIKE or func in _NEW:
            out = func(*args, **_host_device(kwargs))
            side = _is_sim(kwargs["device"]) if kwargs.get("device") is not None else on_device(args[0])
            if func is torch.Tensor.new_tensor and side:
                self._sync("host->device copy (new_tensor)")
            return tree_map(lambda t: _mark(t, side), out)
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self._move(func, args, kwargs)
        if func in _READS and dev:
            self._sync(f"device->host read ({func.__name__})")
        elif func in _SIZE_FROM_VALUES and dev:
            self._sync(f"output size from device values ({func.__name__})")
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and dev:
            index = args[1] if len(args) > 1 else None
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0
                   for i in tree_flatten(index)[0]):
                self._sync(f"boolean-mask indexing ({func.__name__})")
        elif func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and dev \
                and kwargs.get("output_size") is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            self._sync("output size from device values (repeat_interleave)")
        elif func is torch.Tensor.copy_ and len(args) > 1 and isinstance(args[1], torch.Tensor) \
                and on_device(args[0]) != on_device(args[1]) and not kwargs.get("non_blocking", False) \
                and not (len(args) > 2 and args[2]):
            self._sync("host->device copy (copy_)" if on_device(args[0]) else "device->host copy (copy_)")
        if dev and func not in _MIX_OK:
            host = [t for t in tensors if not on_device(t) and t.dim() > 0 and t.device.type == "cpu"]
            if host:
                name = getattr(func, "__name__", repr(func))
                raise SimulatedDeviceError(
                    f"{name}: tensors on the simulated CUDA device and on the host together (CUDA raises "
                    f"'Expected all tensors to be on the same device'): host tensor(s) of shape "
                    f"{[tuple(t.shape) for t in host]} at {_where()}")
        if _is_dvg_op(func) and dev and _validate_flag(func, args, kwargs):
            self._sync(f"dvg op content checks ({func})")
        out = func(*args, **kwargs)
        side = bool(dev)
        inputs = {id(t) for t in tensors}  # in-place ops return their input: it keeps its place
        return tree_map(lambda t: _mark(t, side) if isinstance(t, torch.Tensor) and id(t) not in inputs else t, out)

    def _move(self, func, args, kwargs):
        """`.to(...)` / `.cuda()` / `.cpu()`: the real call without the device, then the simulated place."""
        src = args[0]
        target: Optional[bool] = {torch.Tensor.cuda: True, torch.Tensor.cpu: False}.get(func)
        real = {k: v for k, v in kwargs.items() if k in ("dtype", "copy", "memory_format", "non_blocking")}
        devices = [a for a in args[1:] if isinstance(a, (str, torch.device))] + \
            ([kwargs["device"]] if kwargs.get("device") is not None else [])
        for d in devices:
            target = _is_sim(d)
            if not target and torch.device(d).type != "cpu":  # e.g. meta: a real move
                real["device"] = d
        flags = []
        for a in args[1:]:
            if isinstance(a, torch.Tensor):
                target, real["dtype"] = on_device(a), a.dtype
            elif isinstance(a, torch.dtype):
                real["dtype"] = a
            elif isinstance(a, bool):
                flags.append(a)
        for name, value in zip(("non_blocking", "copy"), flags):
            real[name] = value
        out = torch.Tensor.to(src, **real)
        if target is None or target == on_device(src):
            return out if out is src else _mark(out, on_device(src))
        if not real.get("non_blocking", False):
            self._sync("host->device copy (.to/.cuda)" if target else "device->host copy (.to/.cpu)")
        if out is src and not isinstance(src, torch.nn.Parameter):  # a move makes a new tensor; the source stays
            out = src.clone()
        return _mark(out, target)


@contextlib.contextmanager
def _suspended():
    """Pop every SimulatedCuda off the torch-function mode stack for the block."""
    from torch.overrides import _get_current_function_mode_stack
    modes = [m for m in _get_current_function_mode_stack() if isinstance(m, SimulatedCuda)]
    with contextlib.ExitStack() as stack:
        for _ in modes:
            stack.enter_context(torch.overrides._pop_mode_temporarily())
        yield


def _host_device(kwargs: dict) -> dict:
    """kwargs with a simulated device (SIM_DEVICE, or "cuda" written in the code) replaced by the real CPU."""
    return dict(kwargs, device=torch.device("cpu")) if _is_sim(kwargs.get("device")) else kwargs


def _is_dvg_op(func) -> bool:
    if isinstance(func, torch._ops.OpOverloadPacket):
        return func._qualified_op_name.startswith("dvg::")
    if isinstance(func, torch._ops.OpOverload):
        return func._schema.name.startswith("dvg::")
    return False


def _validate_flag(func, args, kwargs) -> bool:
    """The `validate` argument of a dvg op call (the ops default to True)."""
    schema = func.default._schema if isinstance(func, torch._ops.OpOverloadPacket) else func._schema
    names = [a.name for a in schema.arguments]
    if "validate" not in names:
        return False
    if "validate" in kwargs:
        return bool(kwargs["validate"])
    i = names.index("validate")
    if i < len(args):
        return bool(args[i])
    default = schema.arguments[i].default_value
    return True if default is None else bool(default)


def to_device(tree: Any, device: Any) -> Any:
    """tree_map `.to(device)` over the tensors of a nested structure."""
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree)


def summarize(syncs: Iterable[tuple], limit: int = 20) -> str:
    counts = {}
    for kind, where in syncs:
        counts[(kind, where)] = counts.get((kind, where), 0) + 1
    lines = [f"{n:4d} × {kind} at {where}" for (kind, where), n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines[:limit])
