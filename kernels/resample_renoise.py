"""Fused resample + re-noise of a DVG stage transition, in Triton.

One pass produces the next stage's latent from the current clean-latent prediction x̂0
(dvg-spec.md §9–§11, §12.3 steps 4–7):

    S_f(h, w)  = area resize of source frame f from (hs, ws) to (hd, wd), with the source value
                 restored exactly where h and w are both anchors                       (§9 steps 1–2)
    U(t, h, w) = lerp(S_l, S_r, wt) between the anchor frames around t                 (§9 step 3)
    V          = 0.7·U + 0.3·avg3×3(U)   when smoothing (0→1 only; padding counted or excluded) (§10)
    ε          = coordinate hash noise of (coord_t[t], coord_h[h], coord_w[w], c, seed[b]) (§11)
    out        = V·(1 − σ) + ε·σ, stored in the output dtype                          (§12.3 step 7)

Layouts:

    X       (B, C, ts, hs, ws)    any float dtype, any strides
    AnchorT (ts,) AnchorH (hs,) AnchorW (ws,)   int32, the index in the target stage of every source
            coordinate: strictly increasing, first 0, last = target size − 1 (a single source
            coordinate: [0], repeated over the target)
    CoordT (td,) CoordH (hd,) CoordW (wd,)      int64, full-grid coordinates of the target stage
    Seeds   (B,) int64            per-sample noise seed
    Out     "bcthw": (B, C, td, hd, wd) contiguous
            "tokens": (B, (td/pt)(hd/ph)(wd/pw), C·pt·ph·pw) contiguous; token n = (t', h', w') in
            row-major order, inner index ((c·pt + dt)·ph + dh)·pw + dw — the flattening order of the
            patch-embedding Conv3d weight (out, C, pt, ph, pw), so `tokens @ W.view(out, -1).T`
            equals the Conv3d.

Program mapping: the output is seen as rows × columns w, rows being (b, c, t, h) for "bcthw" (a tile
row is a contiguous output row) and (b, t, h, c) for "tokens" (a tile covers whole token vectors, so
stores are not scattered in pw-element pieces); one program computes a BLOCK_R × BLOCK_W tile.
Everything that depends on one axis only (area taps, anchor lookup by binary search over the tiny
anchor arrays, the temporal lerp weight, the row/column parts of the hash) is computed on [BLOCK_R]
or [BLOCK_W] vectors and broadcast; per element there are at most
2 frames × 2×2 taps of loads (one load at anchor frames). Smoothing recomputes the 3×3
neighbourhood (halo) instead of a second pass: 9 shifted evaluations of U, which only the 0→1
transition (the smallest target grid) pays.

Numerics: fp32 for all resize/blend math, fp64 for Box–Muller, int64 two's-complement (wrapping)
for the hash, whose right shifts must be arithmetic — Triton's `>>` on a signed type is. Each op is
rounded as the torch reference rounds it (area sum in row-major order then halvings; lerp as torch's
CPU kernel does it, one fused multiply-add from the nearer end; `0.7·x` and `0.3·pooled` rounded
separately; divisions by 9 / the window count and the lerp weight with IEEE division), and the
launcher disables fp contraction, so on CPU (interpreter) the result is bit-identical to the
reference and on CUDA it differs only through libdevice's `log`/`cos` (≤ 1 ulp in fp64, which almost
never changes the fp32 noise).

Cost: per output element ~10 wrapping 64-bit multiplies (emulated with 32-bit IMADs on NVIDIA),
one fp64 log, sqrt and cos: far more arithmetic than the ≤ 10 bytes/element of memory traffic, so
on GPUs with slow fp64 (consumer cards, 1/64 rate) the kernel is compute-bound; on H100/H200
(fp64 at 1/2 of fp32) it sits near the balance point. The benchmark reports both GB/s and
elements/s.

Pure kernel code (no diffusers import); argument checking lives in `dvg_engine.ops.resample`.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Sequence

import numpy as np
import torch
import triton
import triton.language as tl


def _signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= (1 << 63) else value


# dvg-spec §11 hash constants as signed int64: the same 64 bits as the unsigned values of the spec, so
# the wrapping products are identical, and a signed type makes Triton's `>>` the arithmetic shift the
# reference uses (no uint64 sign-fill emulation needed).
K_T = tl.constexpr(_signed64(0x9E3779B185EBCA87))
K_H = tl.constexpr(_signed64(0xC2B2AE3D27D4EB4F))
K_W = tl.constexpr(_signed64(0x165667B19E3779F9))
K_C = tl.constexpr(_signed64(0x85EBCA77C2B2AE63))
K_S = tl.constexpr(_signed64(0x27D4EB2F165667C5))
K_G = tl.constexpr(_signed64(0x9E3779B97F4A7C15))
K_M1 = tl.constexpr(_signed64(0xBF58476D1CE4E5B9))
K_M2 = tl.constexpr(_signed64(0x94D049BB133111EB))
LOW53 = tl.constexpr((1 << 53) - 1)
U_LOW = tl.constexpr(1e-12)
U_HIGH = tl.constexpr(1.0 - 1e-12)
TWO_PI = tl.constexpr(2.0 * 3.141592653589793)

SMOOTHING_WEIGHT = 0.3


@triton.jit
def _last_anchor_at_or_before(Anchor, n_anchor, pos, SEARCH_STEPS: tl.constexpr):
    """Index of the last anchor ≤ pos (0 when none is): a branch-free binary search over the
    strictly increasing int32 anchors; SEARCH_STEPS ≥ bit_length(n_anchor − 1)."""
    idx = tl.zeros_like(pos)
    for i in tl.static_range(SEARCH_STEPS):
        cand = idx + (1 << (SEARCH_STEPS - 1 - i))
        ok = cand < n_anchor
        a = tl.load(Anchor + cand, mask=ok, other=0)
        idx = tl.where(ok & (a <= pos), cand, idx)
    return idx


@triton.jit
def _axis_taps(Anchor, pos, n_src, n_dst, SEARCH_STEPS: tl.constexpr):
    """Area-resize taps and anchor lookup of target positions `pos` (int64 vector) on one spatial
    axis. Returns (first, two, src_at_anchor, is_anchor, valid): the window is source indices
    [first, first + two], the adaptive-pooling window [⌊p·n_src/n_dst⌋, ⌈(p+1)·n_src/n_dst⌉), which
    holds 1 or 2 source indices because n_src ≤ n_dst."""
    valid = (pos >= 0) & (pos < n_dst)
    p = tl.where(valid, pos, 0)
    first = (p * n_src) // n_dst
    end = ((p + 1) * n_src + n_dst - 1) // n_dst
    two = end - first > 1
    j = _last_anchor_at_or_before(Anchor, n_src, p, SEARCH_STEPS)
    is_anchor = tl.load(Anchor + j).to(tl.int64) == p
    return first, two, j.to(tl.int64), is_anchor, valid


@triton.jit
def _area_frame(X, frame_off, h_first, h_two, h_src, h_anchor, w_first, w_two, w_src, w_anchor,
                stride_x_h, stride_x_w, mask):
    """Spatially resized source frame at a tile: the area mean (sum in torch's row-major order, then
    exact halvings) except at anchor rows × anchor columns, which take the source value itself."""
    row0 = frame_off[:, None] + (h_first * stride_x_h)[:, None]
    row1 = row0 + stride_x_h
    col0 = (w_first * stride_x_w)[None, :]
    col1 = col0 + stride_x_w
    two_h = h_two[:, None]
    two_w = w_two[None, :]
    anchor = h_anchor[:, None] & w_anchor[None, :]
    area = mask & ~anchor
    x00 = tl.load(X + row0 + col0, mask=area, other=0.0).to(tl.float32)
    x01 = tl.load(X + row0 + col1, mask=area & two_w, other=0.0).to(tl.float32)
    x10 = tl.load(X + row1 + col0, mask=area & two_h, other=0.0).to(tl.float32)
    x11 = tl.load(X + row1 + col1, mask=area & two_h & two_w, other=0.0).to(tl.float32)
    mean = ((x00 + x01) + x10) + x11
    mean = mean * tl.where(two_h, 0.5, 1.0) * tl.where(two_w, 0.5, 1.0)
    src_off = frame_off[:, None] + (h_src * stride_x_h)[:, None] + (w_src * stride_x_w)[None, :]
    exact = tl.load(X + src_off, mask=mask & anchor, other=0.0).to(tl.float32)
    return tl.where(anchor, exact, mean)


@triton.jit
def _upsampled(X, off_l, off_r, wt, h_first, h_two, h_src, h_anchor, w_first, w_two, w_src, w_anchor,
               stride_x_h, stride_x_w, mask):
    """U = lerp(S_l, S_r, wt) as torch's CPU lerp computes it: one fused multiply-add from the nearer
    end, so wt = 0 / 1 give the anchor frames exactly; the frame a weight of 0 ignores is not read."""
    wt2 = wt[:, None]
    start = _area_frame(X, off_l, h_first, h_two, h_src, h_anchor, w_first, w_two, w_src, w_anchor,
                        stride_x_h, stride_x_w, mask & (wt2 < 1.0))
    end = _area_frame(X, off_r, h_first, h_two, h_src, h_anchor, w_first, w_two, w_src, w_anchor,
                      stride_x_h, stride_x_w, mask & (wt2 > 0.0))
    small = wt2 < 0.5
    coeff = tl.where(small, wt2, wt2 - 1.0)
    base = tl.where(small, start, end)
    return tl.fma(coeff, end - start, base)


@triton.jit
def _mix64(x):
    # int64 `>>` is arithmetic in Triton, as the reference requires; `*` wraps mod 2^64.
    x = (x ^ (x >> 30)) * K_M1
    x = (x ^ (x >> 27)) * K_M2
    return x ^ (x >> 31)


@triton.jit
def _uniform(h):
    half = tl.full([1, 1], 0.5, tl.float64)
    scale = tl.full([1, 1], 1.1102230246251565e-16, tl.float64)  # 2^-53, exact
    lo = tl.full([1, 1], U_LOW, tl.float64)
    hi = tl.full([1, 1], U_HIGH, tl.float64)
    u = ((h & LOW53).to(tl.float64) + half) * scale
    return tl.minimum(tl.maximum(u, lo), hi)


@triton.jit
def _resample_renoise_kernel(
        X, Out, AnchorT, AnchorH, AnchorW, CoordT, CoordH, CoordW, Seeds,
        stride_x_b, stride_x_c, stride_x_t, stride_x_h, stride_x_w,
        n_rows, channels, src_t, src_h, src_w, dst_t, dst_h, dst_w,
        keep_weight, sigma_weight, smooth_keep, smooth_mix,
        tokens_h, tokens_w, n_tokens, token_dim,
        SMOOTHING: tl.constexpr, TOKENS: tl.constexpr,
        PATCH_T: tl.constexpr, PATCH_H: tl.constexpr, PATCH_W: tl.constexpr,
        SEARCH_STEPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_w = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = pid_w * BLOCK_W + tl.arange(0, BLOCK_W).to(tl.int64)
    row_ok = rows < n_rows
    col_ok = cols < dst_w
    mask = row_ok[:, None] & col_ok[None, :]
    rows = tl.where(row_ok, rows, 0)
    cols = tl.where(col_ok, cols, 0)

    if TOKENS:
        # rows (b, t, h, c), channels fastest: a tile then holds every channel and patch row of its
        # tokens, so its stores fill whole token vectors instead of scattered pw-element pieces
        c = rows % channels
        q = rows // channels
        h = q % dst_h
        q = q // dst_h
        t = q % dst_t
        b = q // dst_t
    else:
        # rows (b, c, t, h): a tile row is a contiguous output row
        h = rows % dst_h
        q = rows // dst_h
        t = q % dst_t
        q = q // dst_t
        c = q % channels
        b = q // channels

    # temporal: the anchor frames around t and the f32 lerp weight (IEEE division, as torch)
    j = _last_anchor_at_or_before(AnchorT, src_t, t, SEARCH_STEPS)
    left = tl.minimum(j, tl.maximum(src_t - 2, 0))
    right = tl.minimum(left + 1, src_t - 1)
    a_left = tl.load(AnchorT + left).to(tl.int64)
    a_right = tl.load(AnchorT + right).to(tl.int64)
    a_first = tl.load(AnchorT)
    a_last = tl.load(AnchorT + (src_t - 1))
    wt = tl.div_rn((t - a_left).to(tl.float32), tl.maximum(a_right - a_left, 1).to(tl.float32))
    wt = tl.where(t <= a_first, 0.0, wt)
    wt = tl.where(t >= a_last, 1.0, wt)
    plane = b * stride_x_b + c * stride_x_c
    off_l = plane + left * stride_x_t
    off_r = plane + right * stride_x_t

    if SMOOTHING == 0:
        h_first, h_two, h_src, h_anchor, h_ok = _axis_taps(AnchorH, h, src_h, dst_h, SEARCH_STEPS)
        w_first, w_two, w_src, w_anchor, w_ok = _axis_taps(AnchorW, cols, src_w, dst_w, SEARCH_STEPS)
        value = _upsampled(X, off_l, off_r, wt, h_first, h_two, h_src, h_anchor, w_first, w_two, w_src,
                           w_anchor, stride_x_h, stride_x_w, mask)
    else:
        # 3×3 window summed in torch's avg_pool2d order (window rows outer, columns inner); out-of-frame
        # taps add an exact 0.
        pooled = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
        value = tl.zeros([BLOCK_R, BLOCK_W], tl.float32)
        count_h = tl.zeros([BLOCK_R], tl.float32)
        count_w = tl.zeros([BLOCK_W], tl.float32)
        for dh in tl.static_range(-1, 2):
            h_first, h_two, h_src, h_anchor, h_ok = _axis_taps(AnchorH, h + dh, src_h, dst_h, SEARCH_STEPS)
            count_h += h_ok.to(tl.float32)
            for dw in tl.static_range(-1, 2):
                w_first, w_two, w_src, w_anchor, w_ok = _axis_taps(AnchorW, cols + dw, src_w, dst_w,
                                                                   SEARCH_STEPS)
                if dh == 0:
                    count_w += w_ok.to(tl.float32)
                tap_mask = mask & h_ok[:, None] & w_ok[None, :]
                tap = _upsampled(X, off_l, off_r, wt, h_first, h_two, h_src, h_anchor, w_first, w_two,
                                 w_src, w_anchor, stride_x_h, stride_x_w, tap_mask)
                pooled += tl.where(tap_mask, tap, 0.0)
                if dh == 0 and dw == 0:
                    value = tap
        if SMOOTHING == 1:
            pooled = tl.div_rn(pooled, tl.full([BLOCK_R, BLOCK_W], 9.0, tl.float32))
        else:
            pooled = tl.div_rn(pooled, count_h[:, None] * count_w[None, :])
        value = value * smooth_keep + pooled * smooth_mix

    # coordinate noise: row and column parts of the wrapping hash are formed once per vector
    seed = tl.load(Seeds + b)
    row_hash = tl.load(CoordT + t) * K_T + tl.load(CoordH + h) * K_H + c * K_C + seed * K_S
    col_hash = tl.load(CoordW + cols) * K_W
    base = row_hash[:, None] + col_hash[None, :]
    u1 = _uniform(_mix64(base))
    u2 = _uniform(_mix64(base + K_G))
    two_pi = tl.full([1, 1], TWO_PI, tl.float64)
    minus_two = tl.full([1, 1], -2.0, tl.float64)
    eps = (tl.sqrt(minus_two * tl.log(u1)) * tl.cos(two_pi * u2)).to(tl.float32)

    result = value * keep_weight + eps * sigma_weight

    if TOKENS:
        row_off = (b * n_tokens * token_dim
                   + ((t // PATCH_T) * tokens_h + h // PATCH_H) * tokens_w * token_dim
                   + ((c * PATCH_T + t % PATCH_T) * PATCH_H + h % PATCH_H) * PATCH_W)
        col_off = (cols // PATCH_W) * token_dim + cols % PATCH_W
    else:
        row_off = rows * dst_w
        col_off = cols
    tl.store(Out + row_off[:, None] + col_off[None, :], result.to(Out.dtype.element_ty), mask=mask)


def _search_steps(*sizes: int) -> int:
    return max(1, max(int(n - 1).bit_length() for n in sizes))


# Tile shapes (BLOCK_R rows × BLOCK_W columns, ~512 elements, 4 warps on a GPU). A fixed heuristic, not
# triton.autotune: the first call must not benchmark (CUDA-graph capture, deterministic timing), and the
# kernel is bound by per-element arithmetic, so the tile mostly has to avoid idle lanes.
TILE_ELEMENTS = 512
BLOCK_W_CHOICES = (128, 64, 32)


def _block_shape(dst_w: int, tokens: bool = False, channels: int = 1, patch_h: int = 1) -> tuple:
    """(BLOCK_R, BLOCK_W). bcthw: the column block that wastes the fewest masked lanes on a row of
    dst_w (ties: the wider). tokens: enough rows for all channels × patch rows of a token (rows are
    (b, t, h, c)), the rest of the tile along w. Under the interpreter, whose cost is per program,
    one large tile."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        block_w = min(128, triton.next_power_of_2(max(dst_w, 1)))
        return max(1, 4096 // block_w), block_w
    if tokens:
        block_r = min(TILE_ELEMENTS // 16, triton.next_power_of_2(channels * patch_h))
        return block_r, TILE_ELEMENTS // block_r
    block_w = min(BLOCK_W_CHOICES, key=lambda bw: (triton.cdiv(dst_w, bw) * bw - dst_w) / (triton.cdiv(dst_w, bw) * bw))
    return TILE_ELEMENTS // block_w, block_w


def resample_renoise(x0: torch.Tensor, anchor_t: torch.Tensor, anchor_h: torch.Tensor, anchor_w: torch.Tensor,
                     coord_t: torch.Tensor, coord_h: torch.Tensor, coord_w: torch.Tensor, seeds: torch.Tensor,
                     sigma: float, smoothing: int, out: torch.Tensor, layout: str,
                     patch: Sequence[int], *, block_r: Optional[int] = None, block_w: Optional[int] = None,
                     num_warps: int = 4) -> torch.Tensor:
    """Launch the fused kernel, writing into `out` (allocated and checked by the caller, see
    `dvg_engine.ops.resample`). `block_r`/`block_w` force a tile (tests, benchmarks)."""
    batch, channels, src_t, src_h, src_w = x0.shape
    dst_t, dst_h, dst_w = coord_t.shape[0], coord_h.shape[0], coord_w.shape[0]
    pt, ph, pw = (int(p) for p in patch)
    n_rows = batch * channels * dst_t * dst_h
    if n_rows == 0 or dst_w == 0:
        return out
    default_r, default_w = _block_shape(dst_w, layout == "tokens", channels, ph)
    block_r = block_r or default_r
    block_w = block_w or default_w
    sigma32 = np.float32(sigma)
    keep_weight = float(np.float32(1.0) - sigma32)   # the reference's (1 − σ) in float32
    smooth_keep = float(np.float32(1.0 - SMOOTHING_WEIGHT))
    smooth_mix = float(np.float32(SMOOTHING_WEIGHT))
    tokens_h, tokens_w = dst_h // ph, dst_w // pw
    n_tokens = (dst_t // pt) * tokens_h * tokens_w
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(dst_w, block_w))
    guard = torch.cuda.device(x0.device) if x0.device.type == "cuda" else contextlib.nullcontext()
    with guard:
        _resample_renoise_kernel[grid](
            x0, out, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds,
            x0.stride(0), x0.stride(1), x0.stride(2), x0.stride(3), x0.stride(4),
            n_rows, channels, src_t, src_h, src_w, dst_t, dst_h, dst_w,
            keep_weight, float(sigma32), smooth_keep, smooth_mix,
            tokens_h, tokens_w, n_tokens, channels * pt * ph * pw,
            SMOOTHING=int(smoothing), TOKENS=(layout == "tokens"),
            PATCH_T=pt, PATCH_H=ph, PATCH_W=pw,
            SEARCH_STEPS=_search_steps(src_t, src_h, src_w),
            BLOCK_R=block_r, BLOCK_W=block_w, num_warps=num_warps,
            enable_fp_fusion=False,
        )
    return out
