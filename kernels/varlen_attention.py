"""Varlen (packed) attention forward in Triton, FlashAttention-2 style.

Math, per packed sequence b and query head h (kv head h // (heads_q // heads_kv)):

    S   = softmax_scale · Q_b,h K_b,hᵀ                       (len_q, len_k)
    Out = softmax(S) V_b,h                                    (len_q, head_dim)
    LSE = log Σ_j exp(S_ij)                                   (len_q,)   natural log, fp32

Layouts (the `flash_attn_varlen_func` convention):

    q   (total_q, heads_q, head_dim)   k, v (total_k, heads_kv, head_dim)   last dim contiguous
    cu_seqlens_q, cu_seqlens_k         int32 (batch + 1,), sequence b is rows [cu[b], cu[b+1])
    out (total_q, heads_q, head_dim)   lse (heads_q, total_q) fp32

Algorithm: one program per (query block of BLOCK_M rows, sequence, query head). It reads its
sequence bounds from cu_seqlens on the device (no host sync; the grid is sized from the host-side
max_seqlen_q), keeps running row maxima / sums in fp32 (online softmax, exponentials in base 2 with
log2(e) folded into the scale), and sweeps the key blocks of its sequence: all full blocks without
masks, then one masked tail block. Rows of a sequence with no keys are written as zeros with
LSE = -inf. Head dims that are not a power of two are padded to BLOCK_D with masked loads.

K and V reach shared memory by one of two paths, chosen per config (the autotuner tries both where
possible): pointer loads (any GPU; cp.async pipelining), or 2-D TMA descriptors over
(total_k, heads_kv·head_dim) on sm90+ when heads are packed densely in each token row. A TMA tile
that runs past its sequence reads the next sequence's rows (zero fill past total); the tail block
masks those scores to -inf and those V rows to 0, so no value crosses from one sequence to another.

Limits: non-causal, no dropout (inference), head_dim ≤ 256 with head_dim % 8 == 0, fp16 / bf16 /
fp32 (fp32 dots run in IEEE precision, not TF32, so fp32 results match an fp32 reference).
This module is pure kernel code: argument checking lives in `dvg_engine.ops.attention`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import List, Optional, Sequence

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def _attn_block_sweep(acc, l_i, m_i, q, K_base, V_base, k_offsets, v_offsets, K_desc, V_desc, kv_row, kv_col,
                      stride_k_tok, stride_v_tok, block_start, block_end, seqlen_k, qk_scale_log2, offs_n, offs_d,
                      HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr,
                      MASK_N: tl.constexpr, USE_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online-softmax update of (acc, l_i, m_i) over the key blocks [block_start, block_end) of one sequence.
    Pointer path: the scalar pointers K_base / V_base address the block at block_start and come back
    advanced; k_offsets / v_offsets are the loop-invariant int32 offsets of one tile (a loop-carried
    tensor of 64-bit pointers would cost two registers per element).
    TMA path: K_desc / V_desc are 2-D (total_k, heads_kv·head_dim) descriptors read at (kv_row, kv_col);
    kv_row comes back advanced."""
    for start_n in range(block_start, block_end, BLOCK_N):
        if MASK_N:
            n_mask = (start_n + offs_n) < seqlen_k
            if EVEN_D:
                kv_mask = n_mask[:, None]
            else:
                kv_mask = n_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
        if USE_TMA:
            # Rows past the sequence belong to the next sequence (or are zero-filled past total): the
            # masks below remove them.
            k = K_desc.load([kv_row, kv_col])
        elif MASK_N:
            k = tl.load(K_base + k_offsets, mask=kv_mask, other=0.0)
        elif EVEN_D:
            k = tl.load(K_base + k_offsets)
        else:
            k = tl.load(K_base + k_offsets, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASK_N:
            qk = tl.where(n_mask[None, :], qk, float("-inf"))
        # softmax_scale > 0 is validated on the host, so scaling commutes with the max and -inf stays -inf.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale_log2)
        qk = qk * qk_scale_log2 - m_new[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if USE_TMA:
            v = V_desc.load([kv_row, kv_col])
            if MASK_N:
                # p = 0 there, but 0 · inf from another sequence's V would still poison this one.
                v = tl.where(n_mask[:, None], v, 0.0)
        elif MASK_N:
            # other=0 matters: a NaN past the end of the buffer times p = 0 would still be NaN.
            v = tl.load(V_base + v_offsets, mask=kv_mask, other=0.0)
        elif EVEN_D:
            v = tl.load(V_base + v_offsets)
        else:
            v = tl.load(V_base + v_offsets, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
        if USE_TMA:
            kv_row += BLOCK_N
        else:
            # Pointer increments are 64-bit; an int32 start_n * stride product could overflow.
            K_base += BLOCK_N * stride_k_tok
            V_base += BLOCK_N * stride_v_tok
    return acc, l_i, m_i, K_base, V_base, kv_row


@triton.jit
def _varlen_attention_fwd_kernel(
        Q, K, V, K_desc, V_desc, Out, Lse, CuSeqlensQ, CuSeqlensK,
        qk_scale_log2,
        stride_q_tok, stride_q_head, stride_k_tok, stride_k_head, stride_v_tok, stride_v_head,
        stride_o_tok, stride_o_head, stride_lse_head,
        heads_per_kv,
        seqlen_q_bucket, seqlen_k_bucket, tma_ok,  # autotuning keys only
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        USE_TMA: tl.constexpr, RETURN_LSE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # tl.dot needs every block dimension >= 16 on a GPU; the interpreter would accept less.
    tl.static_assert(BLOCK_M >= 16)
    tl.static_assert(BLOCK_N >= 16)
    tl.static_assert(BLOCK_D >= 16)
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    tl.static_assert(EVEN_D or not USE_TMA)

    start_m = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2).to(tl.int64)

    q_start = tl.load(CuSeqlensQ + seq)
    seqlen_q = tl.load(CuSeqlensQ + seq + 1) - q_start
    if start_m * BLOCK_M >= seqlen_q:
        return
    k_start = tl.load(CuSeqlensK + seq)
    seqlen_k = tl.load(CuSeqlensK + seq + 1) - k_start
    kv_head = head // heads_per_kv

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # int64 for the scalar base offsets: a 120k-token stream × 3072 channels passes 2**31 elements.
    row0 = q_start.to(tl.int64) + start_m * BLOCK_M
    Q_block_ptrs = Q + row0 * stride_q_tok + head * stride_q_head + offs_m[:, None] * stride_q_tok + offs_d[None, :]
    K_base = K + k_start.to(tl.int64) * stride_k_tok + kv_head * stride_k_head
    V_base = V + k_start.to(tl.int64) * stride_v_tok + kv_head * stride_v_head
    k_offsets = offs_n[:, None] * stride_k_tok + offs_d[None, :]
    v_offsets = offs_n[:, None] * stride_v_tok + offs_d[None, :]
    kv_row = k_start
    kv_col = (kv_head * HEAD_DIM).to(tl.int32)

    row_mask = (start_m * BLOCK_M + offs_m) < seqlen_q
    if EVEN_D:
        q_mask = row_mask[:, None]
    else:
        q_mask = row_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q_block_ptrs, mask=q_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    full_end = (seqlen_k // BLOCK_N) * BLOCK_N
    acc, l_i, m_i, K_base, V_base, kv_row = _attn_block_sweep(
        acc, l_i, m_i, q, K_base, V_base, k_offsets, v_offsets, K_desc, V_desc, kv_row, kv_col,
        stride_k_tok, stride_v_tok, 0, full_end, seqlen_k, qk_scale_log2, offs_n, offs_d,
        HEAD_DIM, BLOCK_N, EVEN_D, False, USE_TMA, DOT_PRECISION)
    acc, l_i, m_i, K_base, V_base, kv_row = _attn_block_sweep(
        acc, l_i, m_i, q, K_base, V_base, k_offsets, v_offsets, K_desc, V_desc, kv_row, kv_col,
        stride_k_tok, stride_v_tok, full_end, seqlen_k, seqlen_k, qk_scale_log2, offs_n, offs_d,
        HEAD_DIM, BLOCK_N, EVEN_D, True, USE_TMA, DOT_PRECISION)

    # A sequence with no keys leaves l_i = 0: its rows are defined as zeros (LSE = -inf), not 0/0.
    has_keys = l_i > 0.0
    inv_l = 1.0 / tl.where(has_keys, l_i, 1.0)
    out = acc * inv_l[:, None]
    O_block_ptrs = Out + row0 * stride_o_tok + head * stride_o_head + offs_m[:, None] * stride_o_tok + offs_d[None, :]
    tl.store(O_block_ptrs, out.to(Out.dtype.element_ty), mask=q_mask)
    if RETURN_LSE:
        lse = tl.where(has_keys, (m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0))) * LN2, float("-inf"))
        tl.store(Lse + head * stride_lse_head + row0 + offs_m, lse, mask=row_mask)


# ---------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """One launch configuration: tile sizes, K/V load path (TMA descriptors or pointers) and the launch
    parameters Triton takes."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    use_tma: bool = False

    def to_triton(self) -> triton.Config:
        return triton.Config({"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "USE_TMA": self.use_tma},
                             num_warps=self.num_warps, num_stages=self.num_stages, pre_hook=_set_block_shapes)

    @staticmethod
    def from_triton(config: triton.Config) -> "AttentionConfig":
        return AttentionConfig(config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps,
                               config.num_stages, bool(config.kwargs.get("USE_TMA", False)))


# (block_m, block_n, num_warps, num_stages), each with pointer loads and, where the GPU has TMA (sm90+),
# with descriptor loads. ptxas for sm90 at head_dim 128 (bf16): a 128-row tile on 4 warps uses 255
# registers and spills ~136 bytes (its fp32 accumulator alone is 128 registers per thread), on 8 warps
# 162-174 registers without spills; both stay in the list and the autotuner decides. The 64-row tiles
# serve short sequences (more programs per SM) and head dim 256; 32×32 is only the last resort for
# fp32 at head dim 256.
_TILES = ((128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3),
          (64, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 2))
_CONFIG_SPACE: Sequence[AttentionConfig] = tuple(
    AttentionConfig(*tile, use_tma=use_tma) for use_tma in (False, True) for tile in _TILES)

# One config under the interpreter: autotuning several fails there, and small tiles keep tests fast.
INTERPRETER_CONFIG = AttentionConfig(block_m=32, block_n=32, num_warps=4, num_stages=1)

# Configs that do not fit a device raise OutOfResources at compile time and the autotuner skips them;
# this bound drops, before any compile, those that cannot fit even an H100's 227 KiB of shared memory.
SHARED_MEMORY_BUDGET = 224 * 1024


def shared_memory_estimate(config: AttentionConfig, block_d: int, element_bytes: int = 2) -> int:
    """Bytes of shared memory for the Q tile plus num_stages buffered K and V tiles."""
    return (config.block_m + 2 * max(1, config.num_stages) * config.block_n) * block_d * element_bytes


def keep(config: AttentionConfig, block_d: int, element_bytes: int = 2, tma_ok: bool = False) -> bool:
    """Prune configurations that cannot run, cannot fit, or cannot pay off for these inputs."""
    if config.use_tma and not tma_ok:
        return False
    if element_bytes == 4 and (config.block_m, config.block_n, config.use_tma) != (64, 64, False):
        return False  # fp32 (tests) runs its dots on FMA units with heavy spilling: one config, few compiles
    if shared_memory_estimate(config, block_d, element_bytes) > SHARED_MEMORY_BUDGET:
        return False
    if block_d >= 128 and config.num_warps == 4 and config.block_m >= 128 and config.num_stages > 3:
        return False  # already spilling registers: deeper pipelining cannot pay
    if block_d < 128 and config.num_warps == 8 and config.block_m * config.block_n < 128 * 128:
        return False  # too little work per warp to hide the softmax
    if config.block_n == 32 and block_d <= 128:
        return False  # only for head dim 256, where larger K/V tiles do not fit shared memory
    if config.block_m < 64:
        return False  # the fallback of candidate_configs() where nothing else fits (fp32 at head dim 256)
    return True


def candidate_configs(block_d: int, element_bytes: int = 2, tma_ok: bool = False) -> List[AttentionConfig]:
    """The configurations the autotuner tries for these inputs (one under the interpreter)."""
    if _interpreting():
        return [INTERPRETER_CONFIG]
    kept = [c for c in _CONFIG_SPACE if keep(c, block_d, element_bytes, tma_ok)]
    if kept:
        return kept
    return [min((c for c in _CONFIG_SPACE if not c.use_tma),
                key=lambda c: shared_memory_estimate(c, block_d, element_bytes))]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _prune(configs: List[triton.Config], named_args, **kwargs) -> List[triton.Config]:
    args = {**named_args, **kwargs}  # where an argument lands differs across Triton versions
    allowed = set(candidate_configs(args["BLOCK_D"], args["Q"].element_size(), bool(args["tma_ok"])))
    kept = [c for c in configs if AttentionConfig.from_triton(c) in allowed]
    return kept or configs[:1]


def _set_block_shapes(nargs) -> None:
    """Autotuner pre-hook: descriptors are created before the config is known; give them its tile."""
    if not nargs.get("USE_TMA", False):
        return
    for name in ("K_desc", "V_desc"):
        nargs[name].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_D"]]


def autotune_configs() -> List[triton.Config]:
    if _interpreting():
        return [INTERPRETER_CONFIG.to_triton()]
    return [c.to_triton() for c in _CONFIG_SPACE]


_varlen_attention_fwd_autotuned = triton.autotune(
    configs=autotune_configs(),
    key=["HEAD_DIM", "BLOCK_D", "RETURN_LSE", "DOT_PRECISION", "seqlen_q_bucket", "seqlen_k_bucket", "tma_ok"],
    prune_configs_by={"early_config_prune": _prune},
)(_varlen_attention_fwd_kernel)


# ---------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------

def block_d_for(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _bucket(n: int) -> int:
    return 0 if n <= 0 else int(math.ceil(math.log2(n)))


def _tensor_descriptor_class():
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
        return TensorDescriptor
    except ImportError:  # triton < 3.4: pointer loads only
        return None


def tma_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether K and V can be read through 2-D TMA descriptors (total_k, heads_kv·head_dim): a GPU with
    TMA (sm90+; or the interpreter, for tests), heads packed densely in each token row, 16-byte aligned
    base pointers and token strides, and a power-of-two head dim (no padded columns)."""
    if _tensor_descriptor_class() is None or k.shape[0] == 0:
        return False
    if q.device.type == "cuda":
        if torch.cuda.get_device_capability(q.device)[0] < 9:
            return False
    elif not _interpreting():
        return False
    head_dim = k.shape[2]
    if head_dim != block_d_for(head_dim):
        return False
    for t in (k, v):
        if t.stride(2) != 1 or (t.shape[1] > 1 and t.stride(1) != head_dim):
            return False
        if t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16:
            return False
    return True


def _descriptors(k: torch.Tensor, v: torch.Tensor, block_n: int, block_d: int):
    TensorDescriptor = _tensor_descriptor_class()
    total_k, heads_kv, head_dim = k.shape
    return tuple(TensorDescriptor(t, [total_k, heads_kv * head_dim], [t.stride(0), 1], [block_n, block_d])
                 for t in (k, v))


def varlen_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                         max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
                         return_lse: bool = False, *, out: Optional[torch.Tensor] = None,
                         lse: Optional[torch.Tensor] = None, config: Optional[AttentionConfig] = None):
    """Launch the kernel on already-validated inputs. Returns (out, lse); lse is an empty fp32 tensor
    when `return_lse` is False.

    q: (total_q, heads_q, head_dim); k, v: (total_k, heads_kv, head_dim), last dim contiguous.
    cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,). max_seqlen_q sizes the grid and must be at least
    the longest query sequence. `out` (total_q, heads_q, head_dim) with a contiguous last dim and `lse`
    (heads_q, total_q) fp32 with contiguous rows may be given (tests poison them to prove every row is
    written). `config` picks one launch configuration instead of autotuning (tests, benchmarks); a config
    with use_tma=True raises ValueError where `tma_supported(q, k, v)` is False.
    """
    total_q, heads_q, head_dim = q.shape
    heads_kv = k.shape[1]
    if out is None:
        out = torch.empty((total_q, heads_q, head_dim), dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty((heads_q, total_q) if return_lse else (0,), dtype=torch.float32, device=q.device)
    batch = cu_seqlens_q.numel() - 1
    if batch <= 0 or max_seqlen_q <= 0 or heads_q == 0 or total_q == 0:
        if return_lse and lse.numel():
            lse.fill_(float("-inf"))
        return out, lse
    block_d = block_d_for(head_dim)
    tma_ok = tma_supported(q, k, v)
    if config is not None and config.use_tma and not tma_ok:
        raise ValueError(f"config={config} is invalid for these inputs; allowed: use_tma=False (TMA needs an sm90+ "
                         "GPU, a power-of-two head_dim, heads packed in each token row and 16-byte alignment)")
    if tma_ok:
        k_desc, v_desc = _descriptors(k, v, config.block_n if config else 64, block_d)
    else:
        k_desc, v_desc = k, v  # placeholders: never read by the pointer path
    lse_arg = lse if return_lse else out  # never dereferenced when RETURN_LSE is False
    stride_lse_head = lse.stride(0) if return_lse else 0
    common = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, RETURN_LSE=bool(return_lse),
                  DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    args = (q, k, v, k_desc, v_desc, out, lse_arg, cu_seqlens_q, cu_seqlens_k, float(softmax_scale) * LOG2E,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), stride_lse_head, heads_q // heads_kv,
            _bucket(max_seqlen_q), _bucket(max_seqlen_k), int(tma_ok))
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        if config is not None:
            grid = (triton.cdiv(max_seqlen_q, config.block_m), batch, heads_q)
            _varlen_attention_fwd_kernel[grid](*args, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                                               USE_TMA=config.use_tma, num_warps=config.num_warps,
                                               num_stages=config.num_stages, **common)
        else:
            def grid(meta):
                return (triton.cdiv(max_seqlen_q, meta["BLOCK_M"]), batch, heads_q)
            _varlen_attention_fwd_autotuned[grid](*args, **common)
    return out, lse


def best_config(head_dim: int, dtype: torch.dtype, return_lse: bool, max_seqlen_q: int,
                max_seqlen_k: int) -> Optional[AttentionConfig]:
    """The configuration the autotuner settled on for this key, if it has tuned one (for reports)."""
    key_prefix = (head_dim, block_d_for(head_dim), bool(return_lse),
                  "ieee" if dtype == torch.float32 else "tf32", _bucket(max_seqlen_q), _bucket(max_seqlen_k))
    for key, cfg in getattr(_varlen_attention_fwd_autotuned, "cache", {}).items():
        # The autotuner appends the tensor dtypes to the key.
        if tuple(key[:len(key_prefix)]) == key_prefix and str(dtype) in map(str, key[len(key_prefix):]):
            return AttentionConfig.from_triton(cfg)
    return None
