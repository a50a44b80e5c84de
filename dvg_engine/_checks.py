"""Argument validation shared by every public function: each error names the argument, the value
received and what is allowed."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch


def fail(name: str, value: Any, allowed: str, exc: type = ValueError) -> None:
    raise exc(f"{name}={_short(value)} is invalid; allowed: {allowed}")


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"<tensor shape={tuple(value.shape)} dtype={value.dtype} device={value.device}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
            isinstance(value, float) and value.is_integer()) and not hasattr(value, "__index__"):
        fail(name, value, "an integer" + _range_text(minimum, maximum))
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        fail(name, value, "an integer" + _range_text(minimum, maximum))
    return value


def _range_text(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_float(name: str, value: Any, *, low: float, high: float, low_open: bool = False,
                high_open: bool = False) -> float:
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(name, value, f"a number in {interval}")
    value = float(value)
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low) or (
            high_open and value == high):
        fail(name, value, f"a number in {interval}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        fail(name, value, "one of " + ", ".join(repr(a) for a in allowed))
    return value


def check_tensor(name: str, value: Any, *, ndim: int | None = None, finite: bool = False,
                 dtypes: Sequence[torch.dtype] | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(name, value, "a torch.Tensor", TypeError)
    if ndim is not None and value.dim() != ndim:
        fail(name, value, f"a {ndim}-D tensor")
    if dtypes is not None and value.dtype not in dtypes:
        fail(name, value, "dtype in " + ", ".join(str(d) for d in dtypes))
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        fail(name, value, "finite values only (found NaN or inf)")
    return value
