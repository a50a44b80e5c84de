"""Varlen token packing (`torch.ops.dvg.pack_tokens`, `unpack_tokens`, `pack_qk_rope`).

Packed layout
-------------
A batch of B samples, each on its own stage grid, becomes one stream of `total` tokens; sample b owns
the segment `[cu_seqlens[b], cu_seqlens[b+1])` of it, laid out as

    [ latent tokens of sample b (its whole stage grid, t-major then h then w) ; valid text tokens of b ]

which is the order HunyuanVideo's and HunyuanVideo-1.5's attention processors build per sample
(`torch.cat([query, encoder_query], dim=1)`; HV-1.5 has already moved its valid image/byT5/MLLM tokens
to the front of the encoder sequence, so in both models the valid text tokens are a prefix).

Inputs of the pack:

* `latent: (total_latent, heads, head_dim)` (or `(total_latent, features)`): the latent tokens of all
  samples concatenated; sample b's are rows `[cu_latent[b], cu_latent[b+1])`.
* `text: (B, text_len, heads, head_dim)` (or `(B, text_len, features)`): padded text tokens; sample b's
  valid tokens are the prefix of length `text_lens[b] = (cu_seqlens[b+1] - cu_seqlens[b]) -
  (cu_latent[b+1] - cu_latent[b])` (0 ≤ text_lens[b] ≤ text_len; 0 = a sample without text).
* or, with `cu_text` int32 `(B+1,)`: `text: (total_text, heads, head_dim)` (or `(total_text, features)`), the
  valid text tokens of all samples concatenated (sample b's are rows `[cu_text[b], cu_text[b+1])`), the layout
  of an engine that keeps one text stream; then `cu_seqlens = cu_latent + cu_text` and `unpack_tokens`
  returns the text stream `(total_text, ...)` (its `text_len` argument is then `total_text`).
* `cu_latent`, `cu_seqlens`: int32 `(B+1,)`, prefix sums starting at 0. Build both on the host from the plan
  with `packed_layout(latent_lens, text_lens)`, which also returns `total` and `max_seqlen` as Python ints
  (no device-to-host read in the step loop); `cu_text = cu_seqlens - cu_latent`.
* `total`: host int, `cu_seqlens[-1]`; it fixes the output size so the fake (meta) implementation and
  `torch.compile` know it without reading device memory.

`unpack_tokens` is the inverse scatter: the packed stream back to `latent (total_latent, ...)` and a
zero-padded `text (B, text_len, ...)`. Outputs are contiguous; inputs may be strided views (for example
`to_q(x).unflatten(-1, (heads, head_dim))`) as long as the last dimension is contiguous.

Fused RoPE
----------
`pack_qk_rope` packs q and k and applies HunyuanVideo's 3-D rotary embedding to the latent tokens only
(text tokens are copied unchanged), exactly as diffusers' `HunyuanVideoRotaryPosEmbed` +
`apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)` do, but with cos/sin computed from each token's
(t, h, w) position instead of a per-stage `(T·H·W, head_dim)` table:

* the head dim is split into `rope_axes_dim = (d_t, d_h, d_w)` (HV and HV-1.5: (16, 56, 56));
  consecutive pairs (2i, 2i+1) of channels rotate together ("interleaved" pairs);
* pair i < d_t/2 uses the frame index t, the next d_h/2 pairs the row h, the last d_w/2 the column w;
  positions are the compact 0..n−1 positions of the sample's token grid `grid_sizes[b] = (T_b, H_b, W_b)`
  (int32 `(B, 3)`, in patches), local latent token n = (t·H_b + h)·W_b + w;
* angle = pos · inv_freq[i] in fp32, with `inv_freq = rope_inv_freq(rope_axes_dim, theta)` computed by
  the same expression as diffusers' `get_1d_rotary_pos_embed` (so the angles are bit-identical);
* out[2i] = x[2i]·cos − x[2i+1]·sin, out[2i+1] = x[2i+1]·cos + x[2i]·sin, in fp32, stored in x's dtype.

Out variants
------------
`dvg::pack_tokens_out`, `dvg::unpack_tokens_out` and `dvg::pack_qk_rope_out` write into caller-provided tensors
(`torch.library.custom_op(..., mutates_args=(...))`, so `torch.compile` and opcheck know what they mutate); the
public functions take them as `out=` (`latent_out=`/`text_out=`, `q_out=`/`k_out=`). This is how inference
frameworks embed ops into buffers they own (CUDA graphs, memory arenas, a slice of a larger tensor), and on CPU
it is also the fastest path: a fresh output is faulted in on first touch. An output may have any strides with a
contiguous last dimension and no two elements in the same memory, and must not overlap any input. Each backend
has one kernel: the allocating op allocates a contiguous output and runs it (the torch reference returns its own
result).

Fresh CPU outputs (C++ backend): for an output of 32 MiB or more, 4 KiB first-touch page faults cost several
times the copy itself, and glibc maps a request of that size afresh unless a free heap chunk fits
(benchmarks/RESULTS.md). So the op keeps `torch.empty`'s memory when it is already faulted in (recycled), and
otherwise gives the output its own 2 MiB-aligned memory mapping advised as transparent huge pages
(`madvise(MADV_HUGEPAGE)`; Linux, THP policy `always` or `madvise`), faulted in per 2 MiB. The mapping belongs to
the returned tensor and is unmapped with it; its storage is therefore not resizable. `DVG_CPP_HUGEPAGES=0` turns
this off (plain `torch.empty` outputs), `DVG_CPP_HUGEPAGES=1` takes the mapping for every large output. Smaller
outputs are plain `torch.empty` allocations.

Backends: torch reference (always; sync-free gathers, also the test oracle), Triton (`kernels/pack.py`,
CUDA, or CPU under TRITON_INTERPRET=1), C++ (`csrc/pack.cpp`, CPU, OpenMP).
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch

from dvg_engine.ops import _registry

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEFAULT_ROPE_AXES_DIM = (16, 56, 56)
DEFAULT_ROPE_THETA = 256.0


# ----------------------------------------------------------------------------------------------------
# Host-side helpers
# ----------------------------------------------------------------------------------------------------

def packed_layout(latent_lens: Sequence[int], text_lens: Sequence[int],
                  device: torch.device | str | None = None) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """Build the packed layout on the host from per-sample token counts.

    latent_lens: B ints (tokens of each sample's stage grid); text_lens: B ints (valid text tokens).
    Returns `(cu_latent, cu_seqlens, total, max_seqlen)`: int32 `(B+1,)` tensors on `device` and host ints.
    """
    latent_lens = [int(n) for n in latent_lens]
    text_lens = [int(n) for n in text_lens]
    if len(latent_lens) != len(text_lens) or not latent_lens:
        raise ValueError(f"latent_lens has {len(latent_lens)} entries and text_lens {len(text_lens)}; allowed: the "
                         "same number (the batch size, at least 1)")
    for name, lens in (("latent_lens", latent_lens), ("text_lens", text_lens)):
        if any(n < 0 for n in lens):
            raise ValueError(f"{name}={lens} is invalid; allowed: non-negative token counts")
    cu_latent = [0]
    cu_seqlens = [0]
    for n_lat, n_txt in zip(latent_lens, text_lens):
        cu_latent.append(cu_latent[-1] + n_lat)
        cu_seqlens.append(cu_seqlens[-1] + n_lat + n_txt)
    max_seqlen = max(a + b for a, b in zip(latent_lens, text_lens))
    return (torch.tensor(cu_latent, dtype=torch.int32, device=device),
            torch.tensor(cu_seqlens, dtype=torch.int32, device=device), cu_seqlens[-1], max_seqlen)


def _rope_inv_freq_uncached(rope_axes_dim: Tuple[int, ...], theta: float, device: torch.device) -> torch.Tensor:
    parts = []
    for dim in rope_axes_dim:
        # The exact expression of diffusers' get_1d_rotary_pos_embed (fp32 arange / dim, theta ** ., 1 / .):
        # identical inverse frequencies make the fp32 angles pos·inv_freq bit-identical to diffusers'.
        parts.append(1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim)))
    return torch.cat(parts).contiguous()


@functools.lru_cache(maxsize=32)
def _rope_inv_freq_cached(rope_axes_dim: Tuple[int, ...], theta: float, device: torch.device) -> torch.Tensor:
    return _rope_inv_freq_uncached(rope_axes_dim, theta, device)


def rope_inv_freq(rope_axes_dim: Sequence[int] = DEFAULT_ROPE_AXES_DIM, theta: float = DEFAULT_ROPE_THETA,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """`(sum(rope_axes_dim) // 2,)` fp32: the inverse frequency of every rotary pair, t-axis pairs first.

    Cached per (axes, theta, device): it depends on the model, never on the stage grid."""
    axes = _check_rope_axes_dim(rope_axes_dim)
    theta = float(theta)
    if not math.isfinite(theta) or theta <= 0:
        raise ValueError(f"theta={theta!r} is invalid; allowed: a positive finite number (diffusers uses 256.0)")
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if torch.compiler.is_compiling():  # traced into the graph instead (dynamo ignores lru_cache)
        return _rope_inv_freq_uncached(axes, theta, device)
    return _rope_inv_freq_cached(axes, theta, device)


def _check_rope_axes_dim(rope_axes_dim) -> Tuple[int, int, int]:
    axes = tuple(rope_axes_dim)
    if len(axes) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 and d % 2 == 0
                                 for d in axes):
        raise ValueError(f"rope_axes_dim={rope_axes_dim!r} is invalid; allowed: three positive even ints (t, h, w), "
                         "e.g. (16, 56, 56)")
    return axes  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------

def _fail(op: str, name: str, value, allowed: str, exc: type = ValueError):
    from dvg_engine._checks import _short
    raise exc(f"dvg::{op}: {name}={_short(value)} is invalid; allowed: {allowed}")


def check_cu_seqlens(op: str, name: str, cu: torch.Tensor, device: torch.device, total: int,
                     content: bool) -> Optional[List[int]]:
    """Metadata checks always; the content checks (start 0, non-decreasing, ends at `total`) when `content`.
    Returns the values when they were read."""
    if not isinstance(cu, torch.Tensor):
        _fail(op, name, cu, "an int32 tensor of shape (batch+1,)", TypeError)
    if cu.dtype != torch.int32:
        _fail(op, name, cu, "dtype torch.int32")
    if cu.dim() != 1 or cu.shape[0] < 2:
        _fail(op, name, cu, "a 1-D tensor of shape (batch+1,) with batch >= 1")
    if not cu.is_contiguous():
        _fail(op, name, cu, "a contiguous tensor")
    if cu.device != device:
        _fail(op, name, cu, f"a tensor on {device} (the device of the token tensors)")
    if not content:
        return None
    values = cu.tolist()
    if values[0] != 0:
        _fail(op, name, values, "prefix sums starting at 0")
    if any(b < a for a, b in zip(values, values[1:])):
        _fail(op, name, values, "non-decreasing prefix sums")
    if values[-1] != total:
        _fail(op, name, values, f"a last entry equal to the token count {total}")
    return values


def _check_tokens(op: str, name: str, x, ndims: Tuple[int, ...], device: Optional[torch.device] = None,
                  dtype: Optional[torch.dtype] = None) -> None:
    if not isinstance(x, torch.Tensor):
        _fail(op, name, x, "a torch.Tensor", TypeError)
    if x.dim() not in ndims:
        _fail(op, name, x, " or ".join(f"a {n}-D tensor" for n in ndims))
    if x.dtype not in _FLOAT_DTYPES:
        _fail(op, name, x, "dtype float32, float16 or bfloat16")
    if dtype is not None and x.dtype != dtype:
        _fail(op, name, x, f"dtype {dtype} (the dtype of the other token tensors)")
    if device is not None and x.device != device:
        _fail(op, name, x, f"device {device} (the device of the other token tensors)")
    if x.numel() > 0 and x.shape[-1] > 1 and x.stride(-1) != 1:
        _fail(op, name, x, "a contiguous last dimension (stride 1)")
    if x.dim() >= 3 and x.numel() > 0 and x.shape[-2] > 1 and x.stride(-2) < x.shape[-1]:
        _fail(op, name, x, "non-overlapping heads (stride(-2) >= head_dim)")


def _features(x: torch.Tensor, leading: int) -> Tuple[int, ...]:
    return tuple(x.shape[leading:])


def _overlaps_itself(x: torch.Tensor) -> bool:
    """True unless the layout provably gives every element its own memory: with the dims of size > 1 sorted by
    stride, each stride must clear the whole extent of the smaller ones (conservative for exotic interleavings)."""
    extent = 1
    for stride, size in sorted((st, n) for n, st in zip(x.shape, x.stride()) if n > 1):
        if stride < extent:
            return True
        extent += stride * (size - 1)
    return False


def check_out(op: str, name: str, out, shape: Tuple[int, ...], like: torch.Tensor) -> None:
    """Metadata checks of a caller-provided output: exactly `shape`, like's dtype and device, a contiguous last
    dimension, no element aliasing another (any other strides are fine: e.g. a slice of a larger buffer)."""
    shape = tuple(shape)
    if not isinstance(out, torch.Tensor):
        _fail(op, name, out, f"a torch.Tensor of shape {shape}", TypeError)
    if tuple(out.shape) != shape:
        _fail(op, name, out, f"shape {shape}")
    if out.dtype != like.dtype:
        _fail(op, name, out, f"dtype {like.dtype} (the dtype of the inputs)")
    if out.device != like.device:
        _fail(op, name, out, f"device {like.device} (the device of the inputs)")
    if out.numel() > 0 and out.shape[-1] > 1 and out.stride(-1) != 1:
        _fail(op, name, out, "a contiguous last dimension (stride 1)")
    if out.numel() > 0 and _overlaps_itself(out):
        _fail(op, name, out, "a layout in which no two elements share memory (not an expand()ed or as_strided "
              "tensor that repeats elements)")


def require_out_tensors(op: str, **outputs) -> None:
    """Before the dispatcher sees them (it would reject a non-tensor with a message that names no rule): every
    output of an out variant is a tensor, and outputs that belong together are given together."""
    together = " and ".join(outputs) + " are given together" if len(outputs) > 1 else ""
    for name, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            _fail(op, name, value, "a torch.Tensor" + (f" ({together})" if together else ""), TypeError)


def _byte_range(x: torch.Tensor) -> Optional[Tuple[int, int]]:
    if x.numel() == 0:
        return None
    start = x.data_ptr()
    return start, start + (sum((n - 1) * st for n, st in zip(x.shape, x.stride())) + 1) * x.element_size()


def check_disjoint(op: str, outputs: dict, inputs: dict) -> None:
    """No output may share memory with an input or with another output: the kernels read inputs while writing
    outputs, in an order no caller should depend on. Compares address ranges (an interleaving of two views of
    one buffer that never touch is reported as overlapping). Real tensors only; fake/meta ones have no memory."""
    tensors = [t for t in list(outputs.values()) + list(inputs.values()) if isinstance(t, torch.Tensor)]
    if any(t.device.type == "meta" or _is_fake(t) for t in tensors):
        return
    out_items = list(outputs.items())
    for i, (out_name, out) in enumerate(out_items):
        mine = _byte_range(out)
        if mine is None:
            continue
        others = list(inputs.items()) + out_items[i + 1:]
        for other_name, other in others:
            if other is None or other.device != out.device:
                continue
            theirs = _byte_range(other)
            if theirs is not None and mine[0] < theirs[1] and theirs[0] < mine[1]:
                _fail(op, out_name, out, f"memory that does not overlap {other_name} (it does)")


def _is_fake(x: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    return is_fake(x)


def _text_counts(op: str, lat: List[int], seq: List[int], capacity: Optional[int], text_cu: Optional[List[int]]) -> None:
    """Per sample, the text tokens implied by cu_seqlens − cu_latent must fit the padded text (0..capacity) or
    equal the sample's rows of the text stream (cu_text)."""
    for b in range(len(lat) - 1):
        n_lat = lat[b + 1] - lat[b]
        n_txt = seq[b + 1] - seq[b] - n_lat
        if text_cu is not None:
            if n_txt != text_cu[b + 1] - text_cu[b]:
                _fail(op, "cu_seqlens", seq, f"segments holding sample {b}'s {n_lat} latent tokens (cu_latent) plus its "
                      f"{text_cu[b + 1] - text_cu[b]} text tokens (cu_text), i.e. cu_seqlens = cu_latent + cu_text; "
                      f"sample {b} would get {n_txt}")
        elif not 0 <= n_txt <= capacity:
            _fail(op, "cu_seqlens", seq, f"segments holding sample {b}'s {n_lat} latent tokens (cu_latent) plus "
                  f"0..{capacity} text tokens; sample {b} would get {n_txt}")


def _validate_pack(op: str, latent, text, cu_latent, cu_seqlens, total: int, validate: bool,
                   grid_sizes=None, cu_text=None) -> None:
    _check_tokens(op, "latent", latent, (2, 3))
    stream = cu_text is not None
    _check_tokens(op, "text", text, (latent.dim(),) if stream else (latent.dim() + 1,), latent.device, latent.dtype)
    if _features(latent, 1) != _features(text, 1 if stream else 2):
        _fail(op, "text", text, f"per-token shape {tuple(latent.shape[1:])} (as latent)")
    # torch.SymInt: under compile_blocks the packed token count is a symbol (see processors.PackedAttention.for_compile)
    if isinstance(total, bool) or not isinstance(total, (int, torch.SymInt)) or total < 0:
        _fail(op, "total", total, "a non-negative int (cu_seqlens[-1], known on the host)")
    if stream:
        check_cu_seqlens(op, "cu_text", cu_text, latent.device, 0, False)
        batch = cu_text.shape[0] - 1
    else:
        batch = text.shape[0]
    for name, cu in (("cu_latent", cu_latent), ("cu_seqlens", cu_seqlens)):
        check_cu_seqlens(op, name, cu, latent.device, 0, False)
        if cu.shape[0] != batch + 1:
            _fail(op, name, cu, f"shape ({batch + 1},) ({'cu_text' if stream else 'text'} has batch {batch})")
    if grid_sizes is not None:
        if not isinstance(grid_sizes, torch.Tensor) or grid_sizes.dtype != torch.int32 or \
                tuple(grid_sizes.shape) != (batch, 3) or not grid_sizes.is_contiguous() or \
                grid_sizes.device != latent.device:
            _fail(op, "grid_sizes", grid_sizes, f"a contiguous int32 tensor of shape ({batch}, 3) on {latent.device}: "
                  "the (T, H, W) token grid of every sample")
    if not validate:
        return
    lat = check_cu_seqlens(op, "cu_latent", cu_latent, latent.device, latent.shape[0], True)
    seq = check_cu_seqlens(op, "cu_seqlens", cu_seqlens, latent.device, total, True)
    text_cu = check_cu_seqlens(op, "cu_text", cu_text, latent.device, text.shape[0], True) if stream else None
    _text_counts(op, lat, seq, None if stream else text.shape[1], text_cu)
    if grid_sizes is not None:
        grids = grid_sizes.tolist()
        for b, (t, h, w) in enumerate(grids):
            if min(t, h, w) < 0 or t * h * w != lat[b + 1] - lat[b]:
                _fail(op, "grid_sizes", grids, f"non-negative (T, H, W) per sample with T·H·W = its latent token "
                      f"count; sample {b} has {lat[b + 1] - lat[b]} latent tokens")


def _validate_unpack(op: str, packed, cu_latent, cu_seqlens, total_latent: int, text_len: int,
                     validate: bool, cu_text=None) -> None:
    _check_tokens(op, "packed", packed, (2, 3))
    for name, value in (("total_latent", total_latent), ("text_len", text_len)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)) or value < 0:
            _fail(op, name, value, "a non-negative int (known on the host)")
    check_cu_seqlens(op, "cu_latent", cu_latent, packed.device, total_latent, False)
    check_cu_seqlens(op, "cu_seqlens", cu_seqlens, packed.device, packed.shape[0], False)
    if cu_latent.shape != cu_seqlens.shape:
        _fail(op, "cu_latent", cu_latent, f"the shape of cu_seqlens {tuple(cu_seqlens.shape)}")
    if cu_text is not None:
        check_cu_seqlens(op, "cu_text", cu_text, packed.device, text_len, False)
        if cu_text.shape != cu_seqlens.shape:
            _fail(op, "cu_text", cu_text, f"the shape of cu_seqlens {tuple(cu_seqlens.shape)}")
    if not validate:
        return
    lat = check_cu_seqlens(op, "cu_latent", cu_latent, packed.device, total_latent, True)
    seq = check_cu_seqlens(op, "cu_seqlens", cu_seqlens, packed.device, packed.shape[0], True)
    text_cu = check_cu_seqlens(op, "cu_text", cu_text, packed.device, text_len, True) if cu_text is not None else None
    _text_counts(op, lat, seq, text_len, text_cu)


def _validate_rope(op: str, q_latent, k_latent, q_text, k_text, rope_inv_freq_t, rope_axes_dim) -> Tuple[int, int, int]:
    if q_latent.dim() != 3:
        _fail(op, "q_latent", q_latent, "a 3-D tensor (total_latent, heads, head_dim)")
    _check_tokens(op, "k_latent", k_latent, (3,), q_latent.device, q_latent.dtype)
    _check_tokens(op, "k_text", k_text, (q_text.dim(),), q_latent.device, q_latent.dtype)
    if k_latent.shape != q_latent.shape:
        _fail(op, "k_latent", k_latent, f"the shape of q_latent {tuple(q_latent.shape)}")
    if k_text.shape != q_text.shape:
        _fail(op, "k_text", k_text, f"the shape of q_text {tuple(q_text.shape)}")
    axes = _check_rope_axes_dim(rope_axes_dim)
    head_dim = q_latent.shape[-1]
    if sum(axes) != head_dim:
        _fail(op, "rope_axes_dim", list(rope_axes_dim), f"three even ints summing to head_dim={head_dim}")
    if not isinstance(rope_inv_freq_t, torch.Tensor) or rope_inv_freq_t.dtype != torch.float32 or \
            tuple(rope_inv_freq_t.shape) != (head_dim // 2,) or not rope_inv_freq_t.is_contiguous() or \
            rope_inv_freq_t.device != q_latent.device:
        _fail(op, "rope_inv_freq", rope_inv_freq_t, f"a contiguous float32 tensor of shape ({head_dim // 2},) on "
              f"{q_latent.device} (from dvg_engine.ops.pack.rope_inv_freq)")
    return axes


# ----------------------------------------------------------------------------------------------------
# Torch reference (sync-free gathers; also the CPU fallback and the test oracle)
# ----------------------------------------------------------------------------------------------------

def _segment_of(positions: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """Sample index of each position: the b with cu[b] <= p < cu[b+1] (empty samples are skipped)."""
    return torch.searchsorted(cu[1:].to(torch.int64), positions, right=True)


def _pack_gather_index(cu_latent: torch.Tensor, cu_seqlens: torch.Tensor, total: int, device):
    positions = torch.arange(total, device=device, dtype=torch.int64)
    sample = _segment_of(positions, cu_seqlens)
    cu_lat = cu_latent.to(torch.int64)
    local = positions - cu_seqlens.to(torch.int64)[sample]
    latent_len = cu_lat[sample + 1] - cu_lat[sample]
    is_latent = local < latent_len
    return sample, local, is_latent, cu_lat[sample] + local, local - latent_len


def _rope_cos_sin(local: torch.Tensor, sample: torch.Tensor, grid_sizes: torch.Tensor, inv_freq: torch.Tensor,
                  rope_axes_dim: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """`(n, head_dim)` fp32 cos and sin, each pair's value repeated twice (diffusers' repeat_interleave_real)."""
    grid = grid_sizes.to(torch.int64)[sample]
    rows, cols = grid[:, 1], grid[:, 2]
    plane = (rows * cols).clamp(min=1)
    t = local // plane
    h = (local % plane) // cols.clamp(min=1)
    w = local % cols.clamp(min=1)
    d_t, d_h, d_w = (d // 2 for d in rope_axes_dim)
    pos = torch.cat([t[:, None].expand(-1, d_t), h[:, None].expand(-1, d_h), w[:, None].expand(-1, d_w)], dim=1)
    # fp32 position × fp32 inverse frequency: the single rounding torch.outer does in diffusers.
    angle = pos.to(torch.float32) * inv_freq[None, :]
    return angle.cos().repeat_interleave(2, dim=1), angle.sin().repeat_interleave(2, dim=1)


def _apply_rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, upcast: bool) -> torch.Tensor:
    """diffusers' apply_rotary_emb(use_real=True, use_real_unbind_dim=-1) on x `(n, heads, head_dim)`."""
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(-2)
    if upcast:
        return (x.float() * cos[:, None, :] + x_rotated.float() * sin[:, None, :]).to(x.dtype)
    return x * cos[:, None, :].to(x.dtype) + x_rotated * sin[:, None, :].to(x.dtype)


def pack_tokens_reference(latent: torch.Tensor, text: torch.Tensor, cu_latent: torch.Tensor,
                          cu_seqlens: torch.Tensor, total: int, grid_sizes: Optional[torch.Tensor] = None,
                          rope_inv_freq: Optional[torch.Tensor] = None,
                          rope_axes_dim: Optional[Sequence[int]] = None, upcast: bool = True,
                          cu_text: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Torch reference of the pack (optionally with the fused RoPE on latent tokens).

    latent: (total_latent, *features); text: (B, text_len, *features), or with `cu_text` a stream
    (total_text, *features) → (total, *features) contiguous. With RoPE, features are (heads, head_dim) and the
    math is fp32 when `upcast` (as diffusers), else in x's dtype (a plain same-dtype torch implementation)."""
    sample, local, is_latent, latent_row, text_col = _pack_gather_index(cu_latent, cu_seqlens, total, latent.device)
    out = latent.new_zeros((total, *latent.shape[1:]))
    if total == 0:
        return out
    expand = (-1,) + (1,) * (latent.dim() - 1)
    if latent.shape[0] > 0:
        rows = latent[latent_row.clamp(0, latent.shape[0] - 1)]
        if grid_sizes is not None:
            cos, sin = _rope_cos_sin(local, sample, grid_sizes, rope_inv_freq, rope_axes_dim)
            rows = _apply_rope_reference(rows, cos, sin, upcast)
        out = torch.where(is_latent.view(expand), rows, out)
    if cu_text is not None:
        if text.shape[0] > 0:
            text_row = cu_text.to(torch.int64)[sample] + text_col
            out = torch.where(is_latent.view(expand), out, text[text_row.clamp(0, text.shape[0] - 1)])
    elif text.shape[1] > 0:
        tokens = text[sample, text_col.clamp(0, text.shape[1] - 1)]
        out = torch.where(is_latent.view(expand), out, tokens)
    return out


def unpack_tokens_reference(packed: torch.Tensor, cu_latent: torch.Tensor, cu_seqlens: torch.Tensor,
                            total_latent: int, text_len: int,
                            cu_text: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of the unpack: packed (total, *features) → latent (total_latent, *features) and text:
    (B, text_len, *features) with zeros past each sample's valid text, or with `cu_text` the text stream
    (text_len = total_text, *features)."""
    batch = cu_seqlens.shape[0] - 1
    features = packed.shape[1:]
    device = packed.device
    cu_lat = cu_latent.to(torch.int64)
    cu_seq = cu_seqlens.to(torch.int64)
    rows = torch.arange(total_latent, device=device, dtype=torch.int64)
    sample = _segment_of(rows, cu_latent)
    latent = packed.new_zeros((total_latent, *features))
    if total_latent > 0 and packed.shape[0] > 0:
        latent = packed[(cu_seq[sample] + rows - cu_lat[sample]).clamp(0, packed.shape[0] - 1)]
    latent_len = cu_lat[1:] - cu_lat[:-1]
    if cu_text is not None:
        text = packed.new_zeros((text_len, *features))
        if text_len > 0 and packed.shape[0] > 0:
            text_rows = torch.arange(text_len, device=device, dtype=torch.int64)
            text_sample = _segment_of(text_rows, cu_text)
            src = cu_seq[text_sample] + latent_len[text_sample] + text_rows - cu_text.to(torch.int64)[text_sample]
            text = packed[src.clamp(0, packed.shape[0] - 1)]
        return latent.contiguous(), text.contiguous()
    text = packed.new_zeros((batch, text_len, *features))
    if text_len > 0 and packed.shape[0] > 0:
        text_lens = cu_seq[1:] - cu_seq[:-1] - latent_len
        col = torch.arange(text_len, device=device, dtype=torch.int64)
        src = (cu_seq[:-1] + latent_len)[:, None] + col[None, :]
        valid = col[None, :] < text_lens[:, None]
        gathered = packed[src.clamp(0, packed.shape[0] - 1)]
        text = torch.where(valid.view(batch, text_len, *([1] * len(features))), gathered, text)
    return latent.contiguous(), text.contiguous()


# ----------------------------------------------------------------------------------------------------
# Backends: one implementation per backend and op, writing into `out=` tensors when given, else allocating
# ----------------------------------------------------------------------------------------------------

def _triton_module():
    from dvg_engine.kernels import pack as triton_pack
    return triton_pack


def _cpp_ops():
    if not _registry.cpp_available():
        raise RuntimeError("the C++ extension dvg_engine._C was not built")
    return torch.ops.dvg


def _cpp_out_op(name: str):
    ops = _cpp_ops()
    if not hasattr(ops, name):
        raise RuntimeError(f"the C++ extension dvg_engine._C was built before the out-variant kernels (no dvg::{name}); "
                           "rebuild it with `python setup.py build_ext --inplace`")
    return getattr(ops, name)


def _pack_torch(latent, text, cu_latent, cu_seqlens, total, cu_text, out=None):
    result = pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total, upcast=True, cu_text=cu_text)
    return result if out is None else out.copy_(result)


def _pack_cpp(latent, text, cu_latent, cu_seqlens, total, cu_text, out=None):
    if out is None:  # allocation in C++: a contiguous output, then the same kernel as the out variant
        return _cpp_ops()._cpp_pack_tokens(latent, text, cu_latent, cu_seqlens, total, cu_text)
    _cpp_out_op("_cpp_pack_tokens_out")(latent, text, cu_latent, cu_seqlens, total, cu_text, out)
    return out


def _unpack_torch(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text, latent_out=None, text_out=None):
    latent, text = unpack_tokens_reference(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text)
    if latent_out is None:
        return latent, text
    return latent_out.copy_(latent), text_out.copy_(text)


def _unpack_cpp(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text, latent_out=None, text_out=None):
    if latent_out is None:
        return _cpp_ops()._cpp_unpack_tokens(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text)
    _cpp_out_op("_cpp_unpack_tokens_out")(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text, latent_out,
                                          text_out)
    return latent_out, text_out


def _pack_qk_rope_torch(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, inv_freq,
                        rope_axes_dim, total, cu_text, q_out=None, k_out=None):
    q, k = (pack_tokens_reference(lat, txt, cu_latent, cu_seqlens, total, grid_sizes, inv_freq, rope_axes_dim,
                                  upcast=True, cu_text=cu_text)
            for lat, txt in ((q_latent, q_text), (k_latent, k_text)))
    if q_out is None:
        return q, k
    return q_out.copy_(q), k_out.copy_(k)


def _pack_qk_rope_cpp(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, inv_freq,
                      rope_axes_dim, total, cu_text, q_out=None, k_out=None):
    args = (q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, inv_freq, rope_axes_dim, total,
            cu_text)
    if q_out is None:
        return _cpp_ops()._cpp_pack_qk_rope(*args)
    _cpp_out_op("_cpp_pack_qk_rope_out")(*args, q_out, k_out)
    return q_out, k_out


_PACK_IMPLS = {"torch": _pack_torch, "triton": _registry.lazy_impl(lambda: _triton_module().pack_tokens),
               "cpp": _pack_cpp}
_UNPACK_IMPLS = {"torch": _unpack_torch, "triton": _registry.lazy_impl(lambda: _triton_module().unpack_tokens),
                 "cpp": _unpack_cpp}
_PACK_QK_ROPE_IMPLS = {"torch": _pack_qk_rope_torch,
                       "triton": _registry.lazy_impl(lambda: _triton_module().pack_qk_rope),
                       "cpp": _pack_qk_rope_cpp}


def _unpack_shapes(packed, cu_seqlens, total_latent: int, text_len: int, stream: bool):
    features = tuple(packed.shape[1:])
    text_rows = (text_len,) if stream else (cu_seqlens.shape[0] - 1, text_len)
    return (total_latent, *features), (*text_rows, *features)


# ----------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------

@torch.library.custom_op("dvg::pack_tokens", mutates_args=())
def _pack_tokens_op(latent: torch.Tensor, text: torch.Tensor, cu_latent: torch.Tensor, cu_seqlens: torch.Tensor,
                    total: int, cu_text: Optional[torch.Tensor] = None, validate: bool = True) -> torch.Tensor:
    _validate_pack("pack_tokens", latent, text, cu_latent, cu_seqlens, total, validate, cu_text=cu_text)
    return _registry.dispatch("pack_tokens", latent.device, _PACK_IMPLS, latent, text, cu_latent, cu_seqlens, total,
                              cu_text)


@_pack_tokens_op.register_fake
def _(latent, text, cu_latent, cu_seqlens, total, cu_text=None, validate=True):
    _validate_pack("pack_tokens", latent, text, cu_latent, cu_seqlens, total, False, cu_text=cu_text)
    return latent.new_empty((total, *latent.shape[1:]))


def _validate_pack_out(latent, text, cu_latent, cu_seqlens, total, cu_text, out, validate: bool, real: bool):
    op = "pack_tokens_out"
    _validate_pack(op, latent, text, cu_latent, cu_seqlens, total, validate, cu_text=cu_text)
    check_out(op, "out", out, (total, *latent.shape[1:]), latent)
    if real:
        check_disjoint(op, {"out": out}, {"latent": latent, "text": text, "cu_latent": cu_latent,
                                          "cu_seqlens": cu_seqlens, "cu_text": cu_text})


@torch.library.custom_op("dvg::pack_tokens_out", mutates_args=("out",))
def _pack_tokens_out_op(latent: torch.Tensor, text: torch.Tensor, cu_latent: torch.Tensor, cu_seqlens: torch.Tensor,
                        total: int, out: torch.Tensor, cu_text: Optional[torch.Tensor] = None,
                        validate: bool = True) -> None:
    _validate_pack_out(latent, text, cu_latent, cu_seqlens, total, cu_text, out, validate, real=True)
    _registry.dispatch("pack_tokens_out", latent.device, _PACK_IMPLS, latent, text, cu_latent, cu_seqlens, total,
                       cu_text, out=out)


@_pack_tokens_out_op.register_fake
def _(latent, text, cu_latent, cu_seqlens, total, out, cu_text=None, validate=True):
    _validate_pack_out(latent, text, cu_latent, cu_seqlens, total, cu_text, out, False, real=False)


@torch.library.custom_op("dvg::unpack_tokens", mutates_args=())
def _unpack_tokens_op(packed: torch.Tensor, cu_latent: torch.Tensor, cu_seqlens: torch.Tensor, total_latent: int,
                      text_len: int, cu_text: Optional[torch.Tensor] = None,
                      validate: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    _validate_unpack("unpack_tokens", packed, cu_latent, cu_seqlens, total_latent, text_len, validate, cu_text)
    return _registry.dispatch("unpack_tokens", packed.device, _UNPACK_IMPLS, packed, cu_latent, cu_seqlens,
                              total_latent, text_len, cu_text)


@_unpack_tokens_op.register_fake
def _(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text=None, validate=True):
    _validate_unpack("unpack_tokens", packed, cu_latent, cu_seqlens, total_latent, text_len, False, cu_text)
    latent_shape, text_shape = _unpack_shapes(packed, cu_seqlens, total_latent, text_len, cu_text is not None)
    return packed.new_empty(latent_shape), packed.new_empty(text_shape)


def _validate_unpack_out(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text, latent_out, text_out,
                         validate: bool, real: bool):
    op = "unpack_tokens_out"
    _validate_unpack(op, packed, cu_latent, cu_seqlens, total_latent, text_len, validate, cu_text)
    latent_shape, text_shape = _unpack_shapes(packed, cu_seqlens, total_latent, text_len, cu_text is not None)
    check_out(op, "latent_out", latent_out, latent_shape, packed)
    check_out(op, "text_out", text_out, text_shape, packed)
    if real:
        check_disjoint(op, {"latent_out": latent_out, "text_out": text_out},
                       {"packed": packed, "cu_latent": cu_latent, "cu_seqlens": cu_seqlens, "cu_text": cu_text})


@torch.library.custom_op("dvg::unpack_tokens_out", mutates_args=("latent_out", "text_out"))
def _unpack_tokens_out_op(packed: torch.Tensor, cu_latent: torch.Tensor, cu_seqlens: torch.Tensor, total_latent: int,
                          text_len: int, latent_out: torch.Tensor, text_out: torch.Tensor,
                          cu_text: Optional[torch.Tensor] = None, validate: bool = True) -> None:
    _validate_unpack_out(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text, latent_out, text_out,
                         validate, real=True)
    _registry.dispatch("unpack_tokens_out", packed.device, _UNPACK_IMPLS, packed, cu_latent, cu_seqlens, total_latent,
                       text_len, cu_text, latent_out=latent_out, text_out=text_out)


@_unpack_tokens_out_op.register_fake
def _(packed, cu_latent, cu_seqlens, total_latent, text_len, latent_out, text_out, cu_text=None, validate=True):
    _validate_unpack_out(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text, latent_out, text_out,
                         False, real=False)


@torch.library.custom_op("dvg::pack_qk_rope", mutates_args=())
def _pack_qk_rope_op(q_latent: torch.Tensor, k_latent: torch.Tensor, q_text: torch.Tensor, k_text: torch.Tensor,
                     cu_latent: torch.Tensor, cu_seqlens: torch.Tensor, grid_sizes: torch.Tensor,
                     rope_inv_freq: torch.Tensor, rope_axes_dim: List[int], total: int,
                     cu_text: Optional[torch.Tensor] = None,
                     validate: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    _validate_pack("pack_qk_rope", q_latent, q_text, cu_latent, cu_seqlens, total, validate, grid_sizes, cu_text)
    axes = _validate_rope("pack_qk_rope", q_latent, k_latent, q_text, k_text, rope_inv_freq, rope_axes_dim)
    return _registry.dispatch("pack_qk_rope", q_latent.device, _PACK_QK_ROPE_IMPLS, q_latent, k_latent, q_text, k_text,
                              cu_latent, cu_seqlens, grid_sizes, rope_inv_freq, list(axes), total, cu_text)


@_pack_qk_rope_op.register_fake
def _(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, rope_inv_freq, rope_axes_dim, total,
      cu_text=None, validate=True):
    _validate_pack("pack_qk_rope", q_latent, q_text, cu_latent, cu_seqlens, total, False, grid_sizes, cu_text)
    _validate_rope("pack_qk_rope", q_latent, k_latent, q_text, k_text, rope_inv_freq, rope_axes_dim)
    shape = (total, *q_latent.shape[1:])
    return q_latent.new_empty(shape), q_latent.new_empty(shape)


def _validate_pack_qk_rope_out(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, rope_inv_freq,
                               rope_axes_dim, total, cu_text, q_out, k_out, validate: bool, real: bool):
    op = "pack_qk_rope_out"
    _validate_pack(op, q_latent, q_text, cu_latent, cu_seqlens, total, validate, grid_sizes, cu_text)
    axes = _validate_rope(op, q_latent, k_latent, q_text, k_text, rope_inv_freq, rope_axes_dim)
    shape = (total, *q_latent.shape[1:])
    check_out(op, "q_out", q_out, shape, q_latent)
    check_out(op, "k_out", k_out, shape, q_latent)
    if real:
        check_disjoint(op, {"q_out": q_out, "k_out": k_out},
                       {"q_latent": q_latent, "k_latent": k_latent, "q_text": q_text, "k_text": k_text,
                        "cu_latent": cu_latent, "cu_seqlens": cu_seqlens, "grid_sizes": grid_sizes,
                        "rope_inv_freq": rope_inv_freq, "cu_text": cu_text})
    return axes


@torch.library.custom_op("dvg::pack_qk_rope_out", mutates_args=("q_out", "k_out"))
def _pack_qk_rope_out_op(q_latent: torch.Tensor, k_latent: torch.Tensor, q_text: torch.Tensor, k_text: torch.Tensor,
                         cu_latent: torch.Tensor, cu_seqlens: torch.Tensor, grid_sizes: torch.Tensor,
                         rope_inv_freq: torch.Tensor, rope_axes_dim: List[int], total: int, q_out: torch.Tensor,
                         k_out: torch.Tensor, cu_text: Optional[torch.Tensor] = None, validate: bool = True) -> None:
    axes = _validate_pack_qk_rope_out(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes,
                                      rope_inv_freq, rope_axes_dim, total, cu_text, q_out, k_out, validate, real=True)
    _registry.dispatch("pack_qk_rope_out", q_latent.device, _PACK_QK_ROPE_IMPLS, q_latent, k_latent, q_text, k_text,
                       cu_latent, cu_seqlens, grid_sizes, rope_inv_freq, list(axes), total, cu_text,
                       q_out=q_out, k_out=k_out)


@_pack_qk_rope_out_op.register_fake
def _(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, rope_inv_freq, rope_axes_dim, total,
      q_out, k_out, cu_text=None, validate=True):
    _validate_pack_qk_rope_out(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, rope_inv_freq,
                               rope_axes_dim, total, cu_text, q_out, k_out, False, real=False)


# ----------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------

def pack_tokens(latent: torch.Tensor, text: torch.Tensor, cu_latent: torch.Tensor, cu_seqlens: torch.Tensor,
                total: int, cu_text: Optional[torch.Tensor] = None, validate: bool = True,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """latent: (total_latent, [heads,] dim); text: (B, text_len, [heads,] dim) padded, or with `cu_text`
    (B+1,) int32 a stream (total_text, [heads,] dim) → packed (total, [heads,] dim).

    Sample b's segment is [its latent tokens ; its text tokens]; see the module docstring. `validate=False`
    skips the checks that read `cu_*` values (a device sync on CUDA). `out`: a preallocated (total, [heads,] dim)
    tensor to write into (`dvg::pack_tokens_out`; any strides with a contiguous last dim, not overlapping the
    inputs), for buffers the caller owns (serving stacks, CUDA graphs) and to skip first-touch page faults on CPU;
    returned."""
    if out is None:
        return torch.ops.dvg.pack_tokens(latent, text, cu_latent, cu_seqlens, total, cu_text, validate)
    require_out_tensors("pack_tokens_out", out=out)
    torch.ops.dvg.pack_tokens_out(latent, text, cu_latent, cu_seqlens, total, out, cu_text, validate)
    return out


def unpack_tokens(packed: torch.Tensor, cu_latent: torch.Tensor, cu_seqlens: torch.Tensor, total_latent: int,
                  text_len: int, cu_text: Optional[torch.Tensor] = None, validate: bool = True,
                  latent_out: Optional[torch.Tensor] = None,
                  text_out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """packed: (total, [heads,] dim) → latent (total_latent, [heads,] dim) and text: (B, text_len, [heads,] dim)
    with zeros past each sample's valid text, or with `cu_text` the stream (text_len = total_text, [heads,] dim).

    `latent_out` and `text_out` (both or neither): preallocated outputs of those shapes to write into
    (`dvg::unpack_tokens_out`, same rules as `pack_tokens`' `out`); returned."""
    if latent_out is None and text_out is None:
        return torch.ops.dvg.unpack_tokens(packed, cu_latent, cu_seqlens, total_latent, text_len, cu_text, validate)
    require_out_tensors("unpack_tokens_out", latent_out=latent_out, text_out=text_out)
    torch.ops.dvg.unpack_tokens_out(packed, cu_latent, cu_seqlens, total_latent, text_len, latent_out, text_out,
                                    cu_text, validate)
    return latent_out, text_out


def pack_qk_rope(q_latent: torch.Tensor, k_latent: torch.Tensor, q_text: torch.Tensor, k_text: torch.Tensor,
                 cu_latent: torch.Tensor, cu_seqlens: torch.Tensor, grid_sizes: torch.Tensor, total: int,
                 rope_axes_dim: Sequence[int] = DEFAULT_ROPE_AXES_DIM, theta: float = DEFAULT_ROPE_THETA,
                 inv_freq: Optional[torch.Tensor] = None, cu_text: Optional[torch.Tensor] = None,
                 validate: bool = True, q_out: Optional[torch.Tensor] = None,
                 k_out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """q/k_latent: (total_latent, heads, head_dim); q/k_text: (B, text_len, heads, head_dim) padded, or with
    `cu_text` streams (total_text, heads, head_dim); grid_sizes: int32 (B, 3) token grid (T, H, W) per sample →
    packed q, k (total, heads, head_dim) with HunyuanVideo's 3-D RoPE applied to the latent tokens. `inv_freq`
    defaults to `rope_inv_freq(rope_axes_dim, theta, q_latent.device)` (cached). `q_out` and `k_out` (both or
    neither): preallocated (total, heads, head_dim) outputs (`dvg::pack_qk_rope_out`); returned."""
    if inv_freq is None:
        inv_freq = rope_inv_freq(rope_axes_dim, theta, q_latent.device)
    if q_out is None and k_out is None:
        return torch.ops.dvg.pack_qk_rope(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes,
                                          inv_freq, list(rope_axes_dim), total, cu_text, validate)
    require_out_tensors("pack_qk_rope_out", q_out=q_out, k_out=k_out)
    torch.ops.dvg.pack_qk_rope_out(q_latent, k_latent, q_text, k_text, cu_latent, cu_seqlens, grid_sizes, inv_freq,
                                   list(rope_axes_dim), total, q_out, k_out, cu_text, validate)
    return q_out, k_out


__all__ = ["pack_tokens", "unpack_tokens", "pack_qk_rope", "packed_layout", "rope_inv_freq",
           "pack_tokens_reference", "unpack_tokens_reference", "check_cu_seqlens", "check_out", "check_disjoint",
           "require_out_tensors"]
