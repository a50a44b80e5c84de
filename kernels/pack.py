"""Triton kernels for varlen token packing with the fused HunyuanVideo 3-D RoPE.

Layout (see dvg_engine/ops/pack.py for the full contract): sample b's packed segment
`[cu_seqlens[b], cu_seqlens[b+1])` holds its latent tokens (rows `[cu_latent[b], cu_latent[b+1])` of
`latent (total_latent, heads, head_dim)`) followed by the valid prefix of its text tokens
`text[b, :text_len_b]` with `text_len_b = seg_len_b − latent_len_b` (TEXT_STREAM: rows
`[cu_text[b], cu_text[b+1])` of a `(total_text, heads, head_dim)` text stream instead).

Pack: one program per block of BLOCK_T *output* tokens; each token finds its sample by counting the
`cu_seqlens` entries at or below it (a loop over the batch of scalar loads, cheap for the small batches
of video generation), gathers its row from latent or text, and loops over heads so the RoPE cos/sin of a
token (which depend on the token and the channel pair, not the head) are computed once per program and
reused by every head of q and of k.

RoPE (fused variant): angle = pos · inv_freq[pair] in fp32 (the rounding diffusers does), reduced to
[−π, π] in fp64 before the fp32 cos/sin, because the GPU's fast trig loses accuracy for the angles of up
to a few hundred radians that large grids produce. Interleaved pairs are handled without strided loads:
the tile `x (BLOCK_T, HEAD_DIM)` is loaded coalesced once and split into its even and odd channels in
registers (reshape to (BLOCK_T, HEAD_DIM/2, 2) and `tl.split`); cos/sin are computed once per channel pair.
(An earlier version loaded the pair partner `x[d ^ 1]` with a second, gathered load: the compiler made it
scalar 16-bit loads, four times the vector loads of the tile itself, on sm_90.)

Unpack: one program per block of output rows over a virtual index space: the `total_latent` latent rows
followed by the `B·text_len` padded text rows (text rows past a sample's valid text get zeros), or by the
`total_text` rows of the text stream (TEXT_STREAM).

All offsets are int64 (a 720p step has >100k tokens × 3072 channels).
"""
from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

# Globals used inside @triton.jit must be constexpr (compiled Triton rejects plain globals; the
# interpreter does not). A bare float constexpr would be materialised as fp32, so the kernel builds
# fp64 scalars from them with tl.full(..., tl.float64).
TWO_PI = tl.constexpr(2.0 * math.pi)
INV_TWO_PI = tl.constexpr(1.0 / (2.0 * math.pi))


@triton.jit
def _sample_of(position, Cu, num_samples):
    """Sample index of each position: the number of cu[1..B-1] entries that are <= position."""
    sample = tl.zeros_like(position)
    for k in range(1, num_samples):
        bound = tl.load(Cu + k).to(tl.int64)
        sample += (bound <= position).to(tl.int64)
    return sample


@triton.jit
def _rotate_pairs(x, cos, sin, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Interleaved-pair RoPE of a (BLOCK_T, BLOCK_D) tile with (BLOCK_T, BLOCK_D / 2) cos/sin, as diffusers'
    apply_rotary_emb: even 2i → x[2i]·cos − x[2i+1]·sin, odd 2i+1 → x[2i+1]·cos + x[2i]·sin, in fp32.
    The pairs are split out of the one coalesced load in registers (no second, gathered load)."""
    even, odd = tl.split(tl.reshape(x.to(tl.float32), (BLOCK_T, BLOCK_D // 2, 2)))
    rot_even = even * cos + (-odd) * sin
    rot_odd = odd * cos + even * sin
    return tl.reshape(tl.join(rot_even, rot_odd), (BLOCK_T, BLOCK_D)).to(x.dtype)


@triton.jit
def _pack_kernel(
    Lat, Txt, Out, Lat2, Txt2, Out2,
    CuLat, CuSeq, CuTxt, Grid, InvFreq,
    total, num_samples, heads,
    stride_lat_tok, stride_lat_head,
    stride_txt_b, stride_txt_tok, stride_txt_head,
    stride_lat2_tok, stride_lat2_head,
    stride_txt2_b, stride_txt2_tok, stride_txt2_head,
    stride_out_tok, stride_out_head,
    stride_out2_tok, stride_out2_head,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_SECOND: tl.constexpr, APPLY_ROPE: tl.constexpr, ROPE_PAIRS_T: tl.constexpr, ROPE_PAIRS_H: tl.constexpr,
    TEXT_STREAM: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    position = pid * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    row_ok = position < total
    sample = _sample_of(position, CuSeq, num_samples)
    seg_start = tl.load(CuSeq + sample, mask=row_ok, other=0).to(tl.int64)
    lat_start = tl.load(CuLat + sample, mask=row_ok, other=0).to(tl.int64)
    lat_len = tl.load(CuLat + sample + 1, mask=row_ok, other=0).to(tl.int64) - lat_start
    local = position - seg_start
    is_lat = row_ok & (local < lat_len)
    is_txt = row_ok & (local >= lat_len)
    text_col = local - lat_len

    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    lat_mask = is_lat[:, None] & d_ok[None, :]
    txt_mask = is_txt[:, None] & d_ok[None, :]
    out_mask = row_ok[:, None] & d_ok[None, :]
    lat_row = tl.where(is_lat, lat_start + local, 0)
    if TEXT_STREAM:  # text rows [cu_text[b], cu_text[b+1]) of a (total_text, ...) stream; stride_txt_b is 0
        txt_b = tl.zeros_like(sample)
        txt_t = tl.where(is_txt, tl.load(CuTxt + sample, mask=is_txt, other=0).to(tl.int64) + text_col, 0)
    else:  # text[b, :n_b] of a padded (B, text_len, ...) tensor
        txt_b = tl.where(is_txt, sample, 0)
        txt_t = tl.where(is_txt, text_col, 0)

    if APPLY_ROPE:
        grid_h = tl.load(Grid + sample * 3 + 1, mask=is_lat, other=1).to(tl.int64)
        grid_w = tl.load(Grid + sample * 3 + 2, mask=is_lat, other=1).to(tl.int64)
        plane = tl.maximum(grid_h * grid_w, 1)
        grid_w = tl.maximum(grid_w, 1)
        pos_t = local // plane
        pos_h = (local % plane) // grid_w
        pos_w = local % grid_w
        # One angle per channel pair (BLOCK_D / 2 of them), shared by both channels of the pair.
        pair = tl.arange(0, BLOCK_D // 2)
        axis_pos = tl.where((pair < ROPE_PAIRS_T)[None, :], pos_t[:, None],
                            tl.where((pair < ROPE_PAIRS_T + ROPE_PAIRS_H)[None, :], pos_h[:, None], pos_w[:, None]))
        inv_freq = tl.load(InvFreq + pair, mask=pair < HEAD_DIM // 2, other=0.0)
        angle = axis_pos.to(tl.float32) * inv_freq[None, :]
        # Range reduction in fp64 (exact enough for |angle| < 1e6): fast fp32 trig is only accurate near 0.
        angle64 = angle.to(tl.float64)
        inv_two_pi = tl.full([1, 1], INV_TWO_PI, tl.float64)
        two_pi = tl.full([1, 1], TWO_PI, tl.float64)
        turns = tl.floor(angle64 * inv_two_pi + 0.5)
        reduced = (angle64 - turns * two_pi).to(tl.float32)
        cos = tl.cos(reduced)
        sin = tl.sin(reduced)

    for head in range(heads):
        lat_off = lat_row[:, None] * stride_lat_tok + head * stride_lat_head
        txt_off = txt_b[:, None] * stride_txt_b + txt_t[:, None] * stride_txt_tok + head * stride_txt_head
        out_off = position[:, None] * stride_out_tok + head * stride_out_head + d[None, :]
        x = tl.load(Lat + lat_off + d[None, :], mask=lat_mask, other=0.0)
        if APPLY_ROPE:
            x = _rotate_pairs(x, cos, sin, BLOCK_T, BLOCK_D)
        x = tl.where(lat_mask, x, tl.load(Txt + txt_off + d[None, :], mask=txt_mask, other=0.0))
        tl.store(Out + out_off, x, mask=out_mask)
        if HAS_SECOND:
            lat_off2 = lat_row[:, None] * stride_lat2_tok + head * stride_lat2_head
            txt_off2 = txt_b[:, None] * stride_txt2_b + txt_t[:, None] * stride_txt2_tok + head * stride_txt2_head
            y = tl.load(Lat2 + lat_off2 + d[None, :], mask=lat_mask, other=0.0)
            if APPLY_ROPE:
                y = _rotate_pairs(y, cos, sin, BLOCK_T, BLOCK_D)
            y = tl.where(lat_mask, y, tl.load(Txt2 + txt_off2 + d[None, :], mask=txt_mask, other=0.0))
            # Out2 has its own strides: q_out and k_out are independent caller buffers (any strides each)
            out_off2 = position[:, None] * stride_out2_tok + head * stride_out2_head + d[None, :]
            tl.store(Out2 + out_off2, y, mask=out_mask)


@triton.jit
def _unpack_kernel(
    Packed, OutLat, OutTxt, CuLat, CuSeq, CuTxt,
    total_latent, num_samples, text_rows, text_len_nonzero, heads,
    stride_packed_tok, stride_packed_head,
    stride_lat_tok, stride_lat_head,
    stride_txt_b, stride_txt_tok, stride_txt_head,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, TEXT_STREAM: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    is_lat = row < total_latent
    txt_row = row - total_latent
    is_txt_row = (row >= total_latent) & (txt_row < text_rows)

    lat_sample = _sample_of(row, CuLat, num_samples)
    if TEXT_STREAM:  # text_rows = total_text rows of a stream; sample b owns [cu_text[b], cu_text[b+1])
        txt_sample = tl.where(is_txt_row, _sample_of(txt_row, CuTxt, num_samples), 0)
        txt_col = txt_row - tl.load(CuTxt + txt_sample, mask=is_txt_row, other=0).to(tl.int64)
        txt_b_out = tl.zeros_like(txt_sample)
        txt_t_out = tl.where(is_txt_row, txt_row, 0)
    else:  # text_rows = B·text_len rows of a padded tensor; text_len_nonzero = max(text_len, 1) from the host
        txt_sample = tl.where(is_txt_row, txt_row // text_len_nonzero, 0)
        txt_col = tl.where(is_txt_row, txt_row % text_len_nonzero, 0)
        txt_b_out = txt_sample
        txt_t_out = txt_col
    sample = tl.where(is_lat, lat_sample, txt_sample)
    any_row = is_lat | is_txt_row
    seg_start = tl.load(CuSeq + sample, mask=any_row, other=0).to(tl.int64)
    seg_end = tl.load(CuSeq + sample + 1, mask=any_row, other=0).to(tl.int64)
    lat_start = tl.load(CuLat + sample, mask=any_row, other=0).to(tl.int64)
    lat_len = tl.load(CuLat + sample + 1, mask=any_row, other=0).to(tl.int64) - lat_start
    text_valid = is_txt_row & (txt_col < seg_end - seg_start - lat_len)
    src = tl.where(is_lat, seg_start + row - lat_start, seg_start + lat_len + txt_col)
    src = tl.where(is_lat | text_valid, src, 0)

    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    read_mask = (is_lat | text_valid)[:, None] & d_ok[None, :]
    lat_store = is_lat[:, None] & d_ok[None, :]
    txt_store = is_txt_row[:, None] & d_ok[None, :]
    lat_dst = tl.where(is_lat, row, 0)
    for head in range(heads):
        x = tl.load(Packed + src[:, None] * stride_packed_tok + head * stride_packed_head + d[None, :],
                    mask=read_mask, other=0.0)
        tl.store(OutLat + lat_dst[:, None] * stride_lat_tok + head * stride_lat_head + d[None, :], x, mask=lat_store)
        tl.store(OutTxt + txt_b_out[:, None] * stride_txt_b + txt_t_out[:, None] * stride_txt_tok
                 + head * stride_txt_head + d[None, :], x, mask=txt_store)


# ----------------------------------------------------------------------------------------------------
# Configs: one per head-dim size class (a copy has nothing to tune beyond a tile of ~4-8k elements).
# ----------------------------------------------------------------------------------------------------

def _config(block_d: int):
    """(BLOCK_T, num_warps): tiles of about 4k elements, enough bytes in flight per program for a copy."""
    block_t = max(1, min(64, 4096 // block_d))
    num_warps = 4 if block_t * block_d <= 4096 else 8
    return block_t, num_warps


MAX_CHUNK = 1024


def _as_3d(x: torch.Tensor, leading: int) -> torch.Tensor:
    """View (.., features) as (.., features / chunk, chunk) so 2-D and 3-D token tensors share one kernel, and
    wide feature rows (hidden states of 3072 channels) become several register-sized "heads"."""
    if x.dim() != leading + 1:
        return x
    features = x.shape[-1]
    for chunk in (MAX_CHUNK, 512, 256, 128, 64, 32, 16):
        if features > chunk and features % chunk == 0:
            return x.unflatten(-1, (features // chunk, chunk))
    return x.unsqueeze(leading)


def _text_view(txt, stream: bool):
    """(b-stride, token-stride, head-stride) view of the text input: padded (B, L, h, d) or stream (N, h, d)."""
    if stream:
        txt3 = _as_3d(txt, 1)
        return txt3, (0, txt3.stride(0), txt3.stride(1))
    txt3 = _as_3d(txt, 2)
    return txt3, (txt3.stride(0), txt3.stride(1), txt3.stride(2))


def _launch_pack(lat, txt, cu_latent, cu_seqlens, total, lat2=None, txt2=None, grid_sizes=None, inv_freq=None,
                 rope_axes_dim=None, out=None, out2=None, cu_text=None):
    stream = cu_text is not None
    lat3 = _as_3d(lat, 1)
    txt3, txt_strides = _text_view(txt, stream)
    heads, head_dim = lat3.shape[1], lat3.shape[2]
    out = lat.new_empty((total, *lat.shape[1:])) if out is None else out
    if lat2 is not None and out2 is None:
        out2 = lat.new_empty((total, *lat.shape[1:]))
    out2 = out if lat2 is None else out2
    if total == 0 or heads == 0 or head_dim == 0:
        return (out, out2) if lat2 is not None else out
    out3 = _as_3d(out, 1)
    lat2_3 = _as_3d(lat2, 1) if lat2 is not None else lat3
    txt2_3, txt2_strides = _text_view(txt2, stream) if txt2 is not None else (txt3, txt_strides)
    out2_3 = _as_3d(out2, 1)
    block_d = triton.next_power_of_2(head_dim)
    block_t, num_warps = _config(block_d)
    apply_rope = grid_sizes is not None
    grid = (triton.cdiv(total, block_t),)
    with torch.cuda.device(lat.device) if lat.device.type == "cuda" else contextlib.nullcontext():
        _pack_kernel[grid](
            lat3, txt3, out3, lat2_3, txt2_3, out2_3,
            cu_latent, cu_seqlens, cu_text if stream else cu_seqlens,
            grid_sizes if apply_rope else cu_seqlens, inv_freq if apply_rope else out3,
            total, cu_seqlens.shape[0] - 1, heads,
            lat3.stride(0), lat3.stride(1),
            *txt_strides,
            lat2_3.stride(0), lat2_3.stride(1),
            *txt2_strides,
            out3.stride(0), out3.stride(1),
            out2_3.stride(0), out2_3.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_T=block_t,
            HAS_SECOND=lat2 is not None, APPLY_ROPE=apply_rope,
            ROPE_PAIRS_T=(rope_axes_dim[0] // 2) if apply_rope else 0,
            ROPE_PAIRS_H=(rope_axes_dim[1] // 2) if apply_rope else 0,
            TEXT_STREAM=stream,
            num_warps=num_warps,
        )
    return (out, out2) if lat2 is not None else out


def pack_tokens(latent, text, cu_latent, cu_seqlens, total, cu_text=None, out=None):
    """latent (total_latent, [heads,] dim), text (B, text_len, [heads,] dim) or with cu_text a stream
    (total_text, [heads,] dim) → packed (total, [heads,] dim).
    `out` (tests: a poisoned, canary-padded view) must have the output's shape and a contiguous last dim."""
    return _launch_pack(latent, text, cu_latent, cu_seqlens, total, out=out, cu_text=cu_text)


def pack_qk_rope(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, inv_freq, rope_axes_dim,
                 total, cu_text=None, q_out=None, k_out=None):
    """Pack q and k (each (total_latent, heads, head_dim) + text, padded or a stream) applying the 3-D RoPE to
    latent tokens; returns (q_packed, k_packed), each (total, heads, head_dim)."""
    return _launch_pack(q_latent, q_text, cu_latent, cu_seqlens, total, k_latent, k_text, grid_sizes, inv_freq,
                        rope_axes_dim, out=q_out, out2=k_out, cu_text=cu_text)


def unpack_tokens(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text=None, latent_out=None,
                  text_out=None):
    """packed (total, [heads,] dim) → latent (total_latent, [heads,] dim) and text (B, text_len, [heads,] dim)
    zero-padded, or with cu_text the stream (text_len = total_text, [heads,] dim)."""
    batch = cu_seqlens.shape[0] - 1
    stream = cu_text is not None
    text_shape = (text_len,) if stream else (batch, text_len)
    latent = packed.new_empty((total_latent, *packed.shape[1:])) if latent_out is None else latent_out
    text = packed.new_empty((*text_shape, *packed.shape[1:])) if text_out is None else text_out
    packed3 = _as_3d(packed, 1)
    heads, head_dim = packed3.shape[1], packed3.shape[2]
    text_rows = text_len if stream else batch * text_len
    rows = total_latent + text_rows
    if rows == 0 or heads == 0 or head_dim == 0:
        return latent, text
    lat3 = _as_3d(latent, 1)
    txt3, txt_strides = _text_view(text, stream)
    block_d = triton.next_power_of_2(head_dim)
    block_t, num_warps = _config(block_d)
    grid = (triton.cdiv(rows, block_t),)
    with torch.cuda.device(packed.device) if packed.device.type == "cuda" else contextlib.nullcontext():
        _unpack_kernel[grid](
            packed3, lat3, txt3, cu_latent, cu_seqlens, cu_text if stream else cu_seqlens,
            total_latent, batch, text_rows, max(text_len, 1), heads,
            packed3.stride(0), packed3.stride(1),
            lat3.stride(0), lat3.stride(1),
            *txt_strides,
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_T=block_t, TEXT_STREAM=stream,
            num_warps=num_warps,
        )
    return latent, text
