"""Backend selection for the `torch.ops.dvg.*` ops.

Every op has up to three implementations: `torch` (the reference; always present), `triton`
(CUDA tensors; CPU tensors only under `TRITON_INTERPRET=1`, which is how the kernels are tested on
a machine without a GPU) and `cpp` (CPU tensors, from the `dvg_engine._C` extension built from
`csrc/`). The choice comes from, in order: `use_backend(...)` (a context manager, what the engine
uses for `DVGConfig.backend`), the environment variable `DVG_BACKEND`, else `"auto"`.

* An explicitly requested backend that cannot run the call raises `RuntimeError` saying why.
* `"auto"` picks triton on CUDA and cpp on CPU where they exist, never the Triton interpreter, and
  falls back to the torch reference with one warning per (op, wanted backend).
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
import warnings
from typing import Callable, Dict, Iterator, Optional

import torch

BACKENDS = ("auto", "torch", "triton", "cpp")

_local = threading.local()
_warned: set = set()


def _check_name(backend: str, source: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{source}={backend!r} is not a backend; allowed: {', '.join(BACKENDS)}")
    return backend


@contextlib.contextmanager
def use_backend(backend: Optional[str]) -> Iterator[None]:
    """Force a backend for ops called inside the block (None leaves the current choice)."""
    if backend is None:
        yield
        return
    _check_name(backend, "backend")
    previous = getattr(_local, "backend", None)
    _local.backend = backend
    try:
        yield
    finally:
        _local.backend = previous


def requested_backend() -> str:
    forced = getattr(_local, "backend", None)
    if forced is not None:
        return forced
    return _check_name(os.environ.get("DVG_BACKEND", "auto").strip().lower() or "auto", "DVG_BACKEND")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        importlib.import_module("triton")
        importlib.import_module("triton.language")
        return True
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def cpp_extension():
    """The loaded `dvg_engine._C` module, or None when the extension was not built."""
    try:
        return importlib.import_module("dvg_engine._C")
    except Exception:
        return None


def cpp_available() -> bool:
    return cpp_extension() is not None


def _unavailable_reason(backend: str, device: torch.device, has_impl: bool) -> Optional[str]:
    if not has_impl:
        return f"this op has no {backend} implementation"
    if backend == "triton":
        if not triton_importable():
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreting():
            return None
        return f"triton runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got device {device}"
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ backend runs on CPU tensors, got device {device}"
        if not cpp_available():
            return "the C++ extension dvg_engine._C was not built (install with a C++ compiler and torch present)"
        return None
    return None


def choose(op: str, device: torch.device, impls: Dict[str, Callable]) -> str:
    """Return the backend name to run `op` on `device`; `impls` maps backend -> implementation."""
    want = requested_backend()
    if want == "torch":
        return "torch"
    if want != "auto":
        reason = _unavailable_reason(want, device, want in impls)
        if reason is not None:
            raise RuntimeError(f"dvg::{op}: backend {want!r} was requested but cannot run: {reason}")
        return want
    preferred = "triton" if device.type == "cuda" else ("cpp" if device.type == "cpu" else None)
    if preferred is None or preferred not in impls:
        return "torch"
    reason = _unavailable_reason(preferred, device, True)
    if preferred == "triton" and device.type == "cpu":  # auto never picks the interpreter
        reason = reason or "auto does not use the Triton interpreter"
    if reason is None:
        return preferred
    key = (op, preferred)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"dvg::{op}: {preferred} backend unavailable ({reason}); using the torch reference",
                      RuntimeWarning, stacklevel=3)
    return "torch"


def dispatch(op: str, device: torch.device, impls: Dict[str, Callable], *args, **kwargs):
    """Run `op` with the chosen backend. Values of `impls` may be zero-arg loaders returning the function
    (so Triton/C++ modules are imported only when used) — mark those with `lazy_impl`."""
    backend = choose(op, device, impls)
    impl = impls[backend]
    if getattr(impl, "_dvg_lazy", False):
        impl = impl()
    _count(op, backend)
    return impl(*args, **kwargs)


def lazy_impl(loader: Callable[[], Callable]) -> Callable:
    """Wrap a zero-arg loader so `dispatch` imports the implementation only when it is chosen."""
    loader._dvg_lazy = True  # type: ignore[attr-defined]
    return loader


# Call counters: tests and reports use them to show which backend actually ran.
CALL_COUNTS: Dict[tuple, int] = {}


def _count(op: str, backend: str) -> None:
    CALL_COUNTS[(op, backend)] = CALL_COUNTS.get((op, backend), 0) + 1


def reset_call_counts() -> None:
    CALL_COUNTS.clear()
