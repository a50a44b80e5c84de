"""Triton kernel for the segment-modulated LayerNorm of packed streams.

    y[r] = (x[r] − mean) · rstd · (1 + scale[seg(r)]) + shift[seg(r)],   rstd = 1 / sqrt(var + eps)

x `(total, D)` (row stride free, last dim contiguous), scale/shift `(B, D)`, seg(r) = the sample whose
`cu_seqlens` segment holds row r (found by counting cu_seqlens[1..B-1] ≤ r). One program normalises
BLOCK_R rows held entirely in registers (D ≤ MAX_BLOCK_D), so x is read once and y written once; mean and
biased variance in fp32 by two passes over the registers (no cancellation of E[x²] − E[x]²).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

MAX_BLOCK_D = 16384


@triton.jit
def _modulated_layer_norm_kernel(
    X, Out, Scale, Shift, CuSeq,
    total, num_samples, dim, eps,
    stride_x_row, stride_out_row, stride_scale_row, stride_shift_row,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = rows < total
    sample = tl.zeros_like(rows)
    for k in range(1, num_samples):
        sample += (tl.load(CuSeq + k).to(tl.int64) <= rows).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / dim
    centered = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(centered * centered, axis=1) / dim
    rstd = 1.0 / tl.sqrt(var + eps)
    scale = tl.load(Scale + sample[:, None] * stride_scale_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(Shift + sample[:, None] * stride_shift_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * (1.0 + scale) + shift
    tl.store(Out + rows[:, None] * stride_out_row + cols[None, :], y.to(Out.dtype.element_ty), mask=mask)


def _config(block_d: int):
    """(BLOCK_R, num_warps): about 4k elements per program; wide rows get more warps."""
    block_r = max(1, min(16, 4096 // block_d))
    num_warps = 4 if block_d <= 2048 else (8 if block_d <= 8192 else 16)
    return block_r, num_warps


def modulated_layer_norm(x, cu_seqlens, scale, shift, eps, out=None):
    """x (total, D), cu_seqlens int32 (B+1,), scale/shift (B, D) → (total, D) in x's dtype.
    `out` (tests: a poisoned, canary-padded view) must be (total, D) with a contiguous last dim."""
    total, dim = x.shape
    if out is None:
        out = torch.empty((total, dim), dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    block_d = triton.next_power_of_2(dim)
    if block_d > MAX_BLOCK_D:
        raise ValueError(f"dvg::modulated_layer_norm: x.shape[1]={dim} is too wide for the Triton kernel; allowed: "
                         f"D <= {MAX_BLOCK_D}")
    block_r, num_warps = _config(block_d)
    grid = (triton.cdiv(total, block_r),)
    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        _modulated_layer_norm_kernel[grid](
            x, out, scale, shift, cu_seqlens,
            total, cu_seqlens.shape[0] - 1, dim, eps,
            x.stride(0), out.stride(0), scale.stride(0), shift.stride(0),
            BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps,
        )
    return out
