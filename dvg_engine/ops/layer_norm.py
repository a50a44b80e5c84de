"""Segment-modulated LayerNorm (`torch.ops.dvg.modulated_layer_norm`) for packed streams that mix samples.

    y[r] = LayerNorm(x[r]) · (1 + scale[seg(r)]) + shift[seg(r)]

* `x: (total, D)` — a packed stream (any row stride, contiguous last dim), fp32/fp16/bf16;
* `cu_seqlens: (B+1,)` int32 — sample b owns rows `[cu_seqlens[b], cu_seqlens[b+1])`, seg(r) = b;
* `scale, shift: (B, D)` in x's dtype (views such as diffusers' `emb.chunk(6, dim=1)` pieces are fine);
* LayerNorm without affine, biased variance, `eps` as diffusers' AdaLayerNormZero (1e-6).

This is diffusers' `norm(x) * (1 + scale[:, None]) + shift[:, None]` of the AdaLN-Zero blocks of
HunyuanVideo / HunyuanVideo-1.5, but per segment of a packed stream, so samples with different stage grids
(or different timesteps) can share one forward. Statistics and math are fp32; the output is in x's dtype.

Out variant: `dvg::modulated_layer_norm_out` (the wrapper's `out=`) writes into a caller-provided `(total, D)`
tensor (any row stride, contiguous last dim, not overlapping the inputs) — for buffers a serving stack owns, and
on CPU to skip the first-touch page faults of a fresh output. One kernel per backend serves both forms. The C++
backend's allocating form gives an output of 32 MiB or more recycled or huge-page memory, as the pack ops do
(see "Fresh CPU outputs" in dvg_engine/ops/pack.py; `DVG_CPP_HUGEPAGES=0` turns it off).

Backends: torch reference (always; `upcast=True` = fp32 math, `upcast=False` = diffusers' same-dtype
arithmetic), Triton (`kernels/modulated_layer_norm.py`), C++ (`csrc/modulated_layer_norm.cpp`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from dvg_engine.ops import _registry
from dvg_engine.ops.pack import (_FLOAT_DTYPES, _cpp_ops, _cpp_out_op, _fail, _segment_of, check_cu_seqlens,
                                 check_disjoint, check_out, require_out_tensors)

DEFAULT_EPS = 1e-6


def _validate(op: str, x, cu_seqlens, scale, shift, eps, validate: bool) -> None:
    if not isinstance(x, torch.Tensor):
        _fail(op, "x", x, "a torch.Tensor", TypeError)
    if x.dim() != 2:
        _fail(op, "x", x, "a 2-D tensor (total_tokens, D)")
    if x.dtype not in _FLOAT_DTYPES:
        _fail(op, "x", x, "dtype float32, float16 or bfloat16")
    if x.numel() > 0 and x.shape[1] > 1 and x.stride(1) != 1:
        _fail(op, "x", x, "a contiguous last dimension (stride 1)")
    check_cu_seqlens(op, "cu_seqlens", cu_seqlens, x.device, x.shape[0], validate)
    batch = cu_seqlens.shape[0] - 1
    for name, t in (("scale", scale), ("shift", shift)):
        if not isinstance(t, torch.Tensor):
            _fail(op, name, t, "a torch.Tensor", TypeError)
        if tuple(t.shape) != (batch, x.shape[1]):
            _fail(op, name, t, f"shape ({batch}, {x.shape[1]}) = (batch, D)")
        if t.dtype != x.dtype:
            _fail(op, name, t, f"dtype {x.dtype} (the dtype of x)")
        if t.device != x.device:
            _fail(op, name, t, f"device {x.device} (the device of x)")
        if t.numel() > 0 and t.shape[1] > 1 and t.stride(1) != 1:
            _fail(op, name, t, "a contiguous last dimension (stride 1)")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        _fail(op, "eps", eps, "a positive finite float (diffusers uses 1e-6)")


def modulated_layer_norm_reference(x: torch.Tensor, cu_seqlens: torch.Tensor, scale: torch.Tensor,
                                   shift: torch.Tensor, eps: float = DEFAULT_EPS, upcast: bool = True) -> torch.Tensor:
    """x: (total, D), cu_seqlens int32 (B+1,), scale/shift (B, D) → (total, D) in x's dtype.

    `upcast=True`: fp32 statistics and modulation (what the kernels compute). `upcast=False`: diffusers'
    arithmetic (F.layer_norm in x's dtype, then the modulation in x's dtype)."""
    segment = _segment_of(torch.arange(x.shape[0], device=x.device), cu_seqlens)
    if upcast:
        normed = F.layer_norm(x.float(), (x.shape[1],), eps=eps)
        return (normed * (1 + scale.float()[segment]) + shift.float()[segment]).to(x.dtype)
    return F.layer_norm(x, (x.shape[1],), eps=eps) * (1 + scale[segment]) + shift[segment]


def _torch_impl(x, cu_seqlens, scale, shift, eps, out=None):
    result = modulated_layer_norm_reference(x, cu_seqlens, scale, shift, eps, upcast=True)
    return result if out is None else out.copy_(result)


def _triton_impl():
    from dvg_engine.kernels import modulated_layer_norm as triton_ln
    return triton_ln.modulated_layer_norm


def _cpp_impl(x, cu_seqlens, scale, shift, eps, out=None):
    if out is None:  # allocation in C++: a contiguous output, then the same kernel as the out variant
        return _cpp_ops()._cpp_modulated_layer_norm(x, cu_seqlens, scale, shift, eps)
    _cpp_out_op("_cpp_modulated_layer_norm_out")(x, cu_seqlens, scale, shift, eps, out)
    return out


_IMPLS = {"torch": _torch_impl, "triton": _registry.lazy_impl(_triton_impl), "cpp": _cpp_impl}


@torch.library.custom_op("dvg::modulated_layer_norm", mutates_args=())
def _modulated_layer_norm_op(x: torch.Tensor, cu_seqlens: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                             eps: float = DEFAULT_EPS, validate: bool = True) -> torch.Tensor:
    _validate("modulated_layer_norm", x, cu_seqlens, scale, shift, eps, validate)
    return _registry.dispatch("modulated_layer_norm", x.device, _IMPLS, x, cu_seqlens, scale, shift, float(eps))


@_modulated_layer_norm_op.register_fake
def _(x, cu_seqlens, scale, shift, eps=DEFAULT_EPS, validate=True):
    _validate("modulated_layer_norm", x, cu_seqlens, scale, shift, eps, False)
    return x.new_empty(x.shape)


def _validate_out(x, cu_seqlens, scale, shift, eps, out, validate: bool, real: bool) -> None:
    op = "modulated_layer_norm_out"
    _validate(op, x, cu_seqlens, scale, shift, eps, validate)
    check_out(op, "out", out, tuple(x.shape), x)
    if real:
        check_disjoint(op, {"out": out}, {"x": x, "cu_seqlens": cu_seqlens, "scale": scale, "shift": shift})


@torch.library.custom_op("dvg::modulated_layer_norm_out", mutates_args=("out",))
def _modulated_layer_norm_out_op(x: torch.Tensor, cu_seqlens: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                                 out: torch.Tensor, eps: float = DEFAULT_EPS, validate: bool = True) -> None:
    _validate_out(x, cu_seqlens, scale, shift, eps, out, validate, real=True)
    _registry.dispatch("modulated_layer_norm_out", x.device, _IMPLS, x, cu_seqlens, scale, shift, float(eps), out=out)


@_modulated_layer_norm_out_op.register_fake
def _(x, cu_seqlens, scale, shift, out, eps=DEFAULT_EPS, validate=True):
    _validate_out(x, cu_seqlens, scale, shift, eps, out, False, real=False)


def modulated_layer_norm(x: torch.Tensor, cu_seqlens: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                         eps: float = DEFAULT_EPS, validate: bool = True,
                         out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x: (total, D); cu_seqlens: int32 (B+1,); scale, shift: (B, D) → LayerNorm(x)·(1 + scale[seg]) + shift[seg],
    (total, D) in x's dtype. `validate=False` skips the checks that read cu_seqlens (a device sync on CUDA).
    `out`: a preallocated (total, D) tensor to write into (`dvg::modulated_layer_norm_out`); returned."""
    if out is None:
        return torch.ops.dvg.modulated_layer_norm(x, cu_seqlens, scale, shift, eps, validate)
    require_out_tensors("modulated_layer_norm_out", out=out)
    torch.ops.dvg.modulated_layer_norm_out(x, cu_seqlens, scale, shift, out, eps, validate)
    return out


__all__ = ["modulated_layer_norm", "modulated_layer_norm_reference"]
