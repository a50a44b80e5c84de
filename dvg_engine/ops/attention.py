"""`torch.ops.dvg.varlen_attention`: attention over a packed stream of variable-length sequences.

Math, per sequence b and query head h (grouped-query: kv head h // (heads_q // heads_kv)):

    Out = softmax(softmax_scale · Q Kᵀ) V,    LSE = logsumexp(softmax_scale · Q Kᵀ, keys)   (natural log)

Calling convention of `flash_attn_varlen_func`, so it is a drop-in:

    q (total_q, heads_q, head_dim); k, v (total_k, heads_kv, head_dim); last dim contiguous.
    cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,), cumulative, starting at 0 and ending at total.
    max_seqlen_q, max_seqlen_k: host ints, at least the longest sequence (they size the grid; no
    device-to-host read happens in the Triton path).
    returns out (total_q, heads_q, head_dim) in q's dtype, and with return_lse=True also
    lse (heads_q, total_q) fp32.

Defined edge cases: a sequence with no keys writes zero rows and LSE = -inf; an empty sequence writes
nothing. Limits: non-causal only (video DiTs attend bidirectionally), dropout_p = 0 (inference),
head_dim a multiple of 8 up to 256, fp16 / bf16 / fp32, heads_q divisible by heads_kv.

Implementations: the torch reference (SDPA per sequence, never a total × total score matrix; the CPU
fallback and the test oracle) and the Triton kernel in `dvg_engine.kernels.varlen_attention` (CUDA,
or CPU tensors under TRITON_INTERPRET=1). Backend choice is `_registry`'s.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .._checks import fail
from . import _registry

OP_NAME = "varlen_attention"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256

# Score elements per chunk when the reference computes LSE explicitly (bounded memory, ~256 MB fp32).
_LSE_CHUNK_ELEMENTS = 1 << 26


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------

def _check_arg_types(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                     causal) -> None:
    """The checks the op schema would otherwise answer with a less specific TypeError (so the functional
    wrapper runs them before calling the op), plus the unsupported modes."""
    if causal is not False:
        fail("causal", causal, "False (video DiTs attend bidirectionally; causal masking is not implemented)",
             NotImplementedError)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or dropout_p != 0:
        fail("dropout_p", dropout_p, "0.0 (this op is inference-only; dropout is not implemented)",
             NotImplementedError)
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(t, torch.Tensor):
            fail(name, t, "a torch.Tensor", TypeError)
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)) or value < 0:
            fail(name, value, "a non-negative Python int (the longest sequence, known on the host)")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))
                                      or not math.isfinite(softmax_scale) or softmax_scale <= 0):
        fail("softmax_scale", softmax_scale, "None (1/sqrt(head_dim)) or a finite number > 0")


def _check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                          softmax_scale, causal, *, check_contents: bool) -> None:
    """Raise ValueError / TypeError / NotImplementedError naming the argument, the value and what is allowed.
    Metadata checks never touch device memory; `check_contents` adds the cu_seqlens content checks,
    which read cu_seqlens on the host (a device sync on CUDA)."""
    _check_arg_types(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                     causal)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            fail(name, t, "a 3-D tensor (total_tokens, heads, head_dim)")
    if q.dtype not in SUPPORTED_DTYPES:
        fail("q.dtype", q.dtype, "one of " + ", ".join(str(d) for d in SUPPORTED_DTYPES))
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            fail(f"{name}.dtype", t.dtype, f"q's dtype {q.dtype}")
    for name, t in (("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if t.device != q.device:
            fail(f"{name}.device", str(t.device), f"q's device {q.device}")
    if k.shape != v.shape:
        fail("v.shape", tuple(v.shape), f"k's shape {tuple(k.shape)} (same tokens, heads and head_dim)")
    head_dim = q.shape[2]
    if head_dim % 8 != 0 or not 8 <= head_dim <= MAX_HEAD_DIM:
        fail("q.shape[2] (head_dim)", head_dim, f"a multiple of 8 in [8, {MAX_HEAD_DIM}]")
    if k.shape[2] != head_dim:
        fail("k.shape[2] (head_dim)", k.shape[2], f"q's head_dim {head_dim}")
    heads_q, heads_kv = q.shape[1], k.shape[1]
    if heads_kv == 0 or heads_q % heads_kv != 0:
        fail("k.shape[1] (heads_kv)", heads_kv, f"a positive divisor of heads_q={heads_q} (grouped-query attention)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.numel() and t.stride(2) != 1:
            fail(f"{name}.stride()", tuple(t.stride()), "a contiguous last dim (stride(2) == 1); call .contiguous()")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype != torch.int32:
            fail(f"{name}.dtype", cu.dtype, "torch.int32")
        if cu.dim() != 1 or cu.numel() < 2:
            fail(f"{name}.shape", tuple(cu.shape), "1-D of length batch + 1 >= 2")
        if not cu.is_contiguous():
            fail(f"{name}.stride()", tuple(cu.stride()), "contiguous")
    if cu_seqlens_k.numel() != cu_seqlens_q.numel():
        fail("cu_seqlens_k.shape", tuple(cu_seqlens_k.shape),
             f"the same batch + 1 as cu_seqlens_q {tuple(cu_seqlens_q.shape)}")
    if check_contents:
        _check_cu_seqlens_contents(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k)


def _check_cu_seqlens_contents(cu_seqlens_q, cu_seqlens_k, total_q, total_k, max_seqlen_q, max_seqlen_k) -> None:
    # One host read for both vectors.
    both = torch.stack([cu_seqlens_q, cu_seqlens_k]).cpu().tolist()
    for name, cu, total, max_name, max_len in (("cu_seqlens_q", both[0], total_q, "max_seqlen_q", max_seqlen_q),
                                                ("cu_seqlens_k", both[1], total_k, "max_seqlen_k", max_seqlen_k)):
        if cu[0] != 0:
            fail(f"{name}[0]", cu[0], "0 (cu_seqlens are cumulative offsets starting at 0)")
        lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
        bad = next((i for i, n in enumerate(lengths) if n < 0), None)
        if bad is not None:
            fail(name, cu if len(cu) <= 12 else f"{cu[:12]}...",
                 f"non-decreasing offsets (entry {bad + 1} = {cu[bad + 1]} < entry {bad} = {cu[bad]})")
        if cu[-1] != total:
            tensor = "q" if name.endswith("q") else "k"
            fail(f"{name}[-1]", cu[-1], f"the number of packed tokens {tensor}.shape[0] = {total}")
        longest = max(lengths)
        if longest > max_len:
            fail(max_name, max_len, f"an int >= the longest sequence in {name} ({longest})")


# ---------------------------------------------------------------------------------------------------
# Torch reference
# ---------------------------------------------------------------------------------------------------

def varlen_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_seqlen_q: Optional[int] = None,
                         max_seqlen_k: Optional[int] = None, softmax_scale: Optional[float] = None,
                         return_lse: bool = False, upcast: bool = True
                         ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Reference varlen attention: `F.scaled_dot_product_attention` on each sequence separately.

    q: (total_q, heads_q, head_dim); k, v: (total_k, heads_kv, head_dim); cu_seqlens_*: int32 (batch + 1,).
    max_seqlen_* are accepted for signature parity and unused. upcast=True computes in fp32 (fp64 stays
    fp64) and casts the output back to q's dtype; upcast=False runs SDPA in the input dtype.
    Returns out (total_q, heads_q, head_dim) in q's dtype, and with return_lse=True also lse
    (heads_q, total_q), fp32 (fp64 for fp64 inputs), computed from score chunks of bounded size.
    """
    del max_seqlen_q, max_seqlen_k
    dtype = q.dtype
    compute_dtype = torch.float64 if dtype == torch.float64 else (torch.float32 if upcast else dtype)
    lse_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    total_q, heads_q, head_dim = q.shape
    heads_kv = k.shape[1]
    group = heads_q // heads_kv
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
    out = torch.zeros((total_q, heads_q, head_dim), dtype=dtype, device=q.device)
    lse = torch.full((heads_q, total_q) if return_lse else (0,), float("-inf"), dtype=lse_dtype, device=q.device)
    bounds_q = cu_seqlens_q.tolist()
    bounds_k = cu_seqlens_k.tolist()
    for b in range(len(bounds_q) - 1):
        q0, q1, k0, k1 = bounds_q[b], bounds_q[b + 1], bounds_k[b], bounds_k[b + 1]
        if q1 == q0 or k1 == k0:  # no rows, or rows with no keys: zeros / -inf as initialised
            continue
        qb = q[q0:q1].transpose(0, 1).to(compute_dtype)           # (heads_q, len_q, head_dim)
        kb = k[k0:k1].transpose(0, 1).to(compute_dtype)           # (heads_kv, len_k, head_dim)
        vb = v[k0:k1].transpose(0, 1).to(compute_dtype)
        if group > 1:
            kb = kb.repeat_interleave(group, dim=0)
            vb = vb.repeat_interleave(group, dim=0)
        # 4-D (1, heads, len, dim): torch's CPU SDPA takes its fused flash path only for 4-D inputs; the
        # 3-D call falls back to the math path, about 5x slower at video lengths.
        ob = F.scaled_dot_product_attention(qb.unsqueeze(0), kb.unsqueeze(0), vb.unsqueeze(0), scale=scale)[0]
        out[q0:q1] = ob.transpose(0, 1).to(dtype)
        if return_lse:
            lse[:, q0:q1] = _chunked_lse(qb.to(lse_dtype), kb.to(lse_dtype), scale)
    return (out, lse) if return_lse else out


def _chunked_lse(qb: torch.Tensor, kb: torch.Tensor, scale: float) -> torch.Tensor:
    """qb: (heads, len_q, d), kb: (heads, len_k, d) -> (heads, len_q) logsumexp over keys of the scores."""
    heads, len_q, _ = qb.shape
    rows = max(1, _LSE_CHUNK_ELEMENTS // max(1, heads * kb.shape[1]))
    parts = []
    for r0 in range(0, len_q, rows):
        scores = torch.matmul(qb[:, r0:r0 + rows], kb.transpose(1, 2)) * scale
        parts.append(torch.logsumexp(scores, dim=-1))
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------

def _torch_impl(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, return_lse):
    # The fallback runs SDPA in the input dtype (as diffusers does); SDPA accumulates in fp32 internally.
    result = varlen_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale=softmax_scale,
                                  return_lse=return_lse, upcast=False)
    if return_lse:
        return result
    return result, q.new_empty((0,), dtype=torch.float32)


def _load_triton():
    from dvg_engine.kernels.varlen_attention import varlen_attention_fwd
    return varlen_attention_fwd


@torch.library.custom_op("dvg::varlen_attention", mutates_args=())
def _varlen_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                         softmax_scale: Optional[float] = None, causal: bool = False, return_lse: bool = False,
                         validate: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, lse); lse is an empty fp32 tensor unless return_lse. See the module docstring."""
    _check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                          causal, check_contents=validate)
    scale = 1.0 / math.sqrt(q.shape[2]) if softmax_scale is None else float(softmax_scale)
    return _registry.dispatch(OP_NAME, q.device, {"torch": _torch_impl, "triton": _registry.lazy_impl(_load_triton)},
                              q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, return_lse)


@_varlen_attention_op.register_fake
def _varlen_attention_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, return_lse=False, validate=True):
    _check_attention_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                          causal, check_contents=False)
    total_q, heads_q, head_dim = q.shape
    out = q.new_empty((total_q, heads_q, head_dim))
    lse = q.new_empty((heads_q, total_q) if return_lse else (0,), dtype=torch.float32)
    return out, lse


# ---------------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------------

def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                     softmax_scale: Optional[float] = None, causal: bool = False, return_lse: bool = False,
                     *, validate: bool = True) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Packed variable-length attention with `flash_attn_varlen_func`'s calling convention.

    q: (total_q, heads_q, head_dim); k, v: (total_k, heads_kv, head_dim), fp16 / bf16 / fp32, last dim
    contiguous, heads_q % heads_kv == 0, head_dim a multiple of 8 up to 256.
    cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,) cumulative offsets; max_seqlen_q / max_seqlen_k: host
    ints >= the longest sequence. softmax_scale defaults to 1/sqrt(head_dim). dropout_p must be 0 and
    causal False (NotImplementedError otherwise).
    Returns out (total_q, heads_q, head_dim), or (out, lse) with lse (heads_q, total_q) fp32 when
    return_lse. validate=False skips the cu_seqlens content checks (each costs a device sync on CUDA);
    shape / dtype / device checks always run.
    """
    _check_arg_types(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                     causal)
    out, lse = torch.ops.dvg.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              dropout_p, softmax_scale, causal, return_lse, validate)
    return (out, lse) if return_lse else out


def cu_seqlens_from_lengths(lengths: List[int], device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """lengths (batch,) of host ints -> int32 cumulative offsets (batch + 1,) starting at 0."""
    offsets = [0]
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            fail(f"lengths[{i}]", n, "a non-negative int")
        offsets.append(offsets[-1] + n)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


__all__ = ["varlen_attention", "varlen_attention_ref", "cu_seqlens_from_lengths", "SUPPORTED_DTYPES", "MAX_HEAD_DIM"]
