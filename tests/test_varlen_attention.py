"""Tests of `torch.ops.dvg.varlen_attention` (dvg_engine/ops/attention.py) and its Triton kernel
(kernels/varlen_attention.py).

On a machine without a GPU the kernel runs under TRITON_INTERPRET=1 (set by conftest.py) on CPU
tensors in fp32 and fp16; the interpreter costs ~2.5 ms per (query block, key block) pair, so shapes
stay small and the kernel tiles are 16 or 32 wide to still cross several block boundaries.
GPU tests (bf16 included, HunyuanVideo-like shapes) skip without CUDA.
"""
from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

try:  # a GPU host may lack hypothesis: only the property test needs it
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = settings = st = None

from _tolerances import assert_twice_torch_error, assert_verbose_allclose
from dvg_engine.ops import _registry
from dvg_engine.ops import attention as attn
from dvg_engine.ops.attention import cu_seqlens_from_lengths, varlen_attention, varlen_attention_ref

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
triton_missing = not _registry.triton_importable()
on_gpu = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not on_gpu or triton_missing, reason="needs a CUDA GPU and triton")

# Kernel tests run on the GPU when there is one, else on CPU tensors through the interpreter.
DEVICE = "cuda" if on_gpu else "cpu"
CPU_OK = on_gpu or os.environ.get("TRITON_INTERPRET") == "1"
runs_kernels = pytest.mark.skipif(triton_missing or not CPU_OK,
                                  reason="needs triton, and a GPU or TRITON_INTERPRET=1")


def _kernels():
    from dvg_engine.kernels import varlen_attention as kernels
    return kernels


def _config(block_m, block_n, use_tma=False):
    return _kernels().AttentionConfig(block_m=block_m, block_n=block_n, num_warps=4,
                                      num_stages=1 if not on_gpu else 2, use_tma=use_tma)


def _tma_possible():
    """TMA descriptors run under the interpreter (CPU) and on sm90+ GPUs."""
    if triton_missing or not CPU_OK or _kernels()._tensor_descriptor_class() is None:
        return False
    return not on_gpu or torch.cuda.get_device_capability()[0] >= 9




def _make_inputs(lens_q, lens_k, heads_q, heads_kv, head_dim, dtype, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total_q, total_k = sum(lens_q), sum(lens_k)
    q = torch.randn(total_q, heads_q, head_dim, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(total_k, heads_kv, head_dim, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(total_k, heads_kv, head_dim, generator=gen).to(device=device, dtype=dtype)
    return q, k, v, cu_seqlens_from_lengths(lens_q, device), cu_seqlens_from_lengths(lens_k, device)


def _per_sequence_sdpa(q, k, v, lens_q, lens_k, scale):
    """Independent oracle: a plain loop of F.scaled_dot_product_attention in fp64, one call per sequence."""
    group = q.shape[1] // k.shape[1]
    outs, q0, k0 = [], 0, 0
    for lq, lk in zip(lens_q, lens_k):
        qb = q[q0:q0 + lq].double().permute(1, 0, 2)
        kb = k[k0:k0 + lk].double().permute(1, 0, 2).repeat_interleave(group, 0)
        vb = v[k0:k0 + lk].double().permute(1, 0, 2).repeat_interleave(group, 0)
        if lk == 0:
            outs.append(torch.zeros(lq, q.shape[1], q.shape[2], dtype=torch.float64, device=q.device))
        else:
            outs.append(F.scaled_dot_product_attention(qb[None], kb[None], vb[None], scale=scale)[0].permute(1, 0, 2))
        q0, k0 = q0 + lq, k0 + lk
    return torch.cat(outs, 0)


def _run_triton(q, k, v, cu_q, cu_k, lens_q, lens_k, *, scale=None, return_lse=True, config=None, out=None, lse=None):
    scale = 1.0 / math.sqrt(q.shape[2]) if scale is None else scale
    return _kernels().varlen_attention_fwd(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), scale, return_lse,
                                           config=config, out=out, lse=lse)


# (lens_q, lens_k, heads_q, heads_kv, head_dim, block_m, block_n): awkward lengths, unequal lengths in one
# batch, an empty sequence and a sequence with no keys, GQA, head dims 64 / 128 / 40 (padded to 64).
CASES = {
    "awkward-lengths": ([1, 17, 97], [1, 17, 97], 2, 2, 64, 32, 32),
    "long-and-tails": ([129, 300], [129, 300], 1, 1, 64, 32, 32),
    "unequal-q-k": ([5, 40, 33], [70, 9, 33], 2, 1, 64, 16, 32),
    "empty-and-keyless": ([0, 20, 7, 0], [0, 0, 31, 13], 2, 2, 64, 16, 16),
    "head-dim-128-gqa": ([49, 18], [49, 18], 4, 2, 128, 32, 32),
    "head-dim-40-padded": ([17, 33], [17, 33], 2, 2, 40, 16, 16),
}


@runs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_triton_matches_fp64_reference_twice_rule(case, dtype):
    lens_q, lens_k, hq, hk, d, bm, bn = CASES[case]
    q, k, v, cu_q, cu_k = _make_inputs(lens_q, lens_k, hq, hk, d, dtype)
    out, lse = _run_triton(q, k, v, cu_q, cu_k, lens_q, lens_k, config=_config(bm, bn))
    ref64, lse64 = varlen_attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k, return_lse=True)
    torch_out = varlen_attention_ref(q, k, v, cu_q, cu_k, upcast=False)
    assert out.dtype == dtype and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (hq, q.shape[0])
    assert_twice_torch_error(out, torch_out, ref64, name=f"out[{case}]")
    # LSE is fp32 in both and does not go through a low-precision P: an fp32 tolerance applies.
    assert_verbose_allclose(lse, lse64, atol=1e-5, rtol=1e-5, name=f"lse[{case}]")
    # The independent per-sequence SDPA loop agrees too (guards against a wrong shared reference).
    loop = _per_sequence_sdpa(q, k, v, lens_q, lens_k, 1.0 / math.sqrt(d))
    assert_verbose_allclose(ref64, loop, atol=1e-12, name="reference vs SDPA loop")


@runs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", ["awkward-lengths", "unequal-q-k", "empty-and-keyless", "head-dim-128-gqa"])
def test_tma_descriptor_path_matches_fp64_reference(case, dtype):
    """The K/V loads through 2-D TMA descriptors: rows past a sequence come from the next sequence (or
    zero fill past total) and must be masked out exactly like the pointer path's masked loads."""
    if not _tma_possible():
        pytest.skip("no TMA here (needs triton.tools.tensor_descriptor and the interpreter or an sm90+ GPU)")
    lens_q, lens_k, hq, hk, d, bm, bn = CASES[case]
    q, k, v, cu_q, cu_k = _make_inputs(lens_q, lens_k, hq, hk, d, dtype)
    assert _kernels().tma_supported(q, k, v)
    out, lse = _run_triton(q, k, v, cu_q, cu_k, lens_q, lens_k, config=_config(bm, bn, use_tma=True))
    ref64, lse64 = varlen_attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k, return_lse=True)
    torch_out = varlen_attention_ref(q, k, v, cu_q, cu_k, upcast=False)
    assert_twice_torch_error(out, torch_out, ref64, name=f"tma out[{case}]")
    assert_verbose_allclose(lse, lse64, atol=1e-5, rtol=1e-5, name=f"tma lse[{case}]")


@runs_kernels
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the interpreter's numpy meets inf - inf
@pytest.mark.parametrize("use_tma", [False, True], ids=["pointers", "tma"])
def test_non_finite_values_do_not_leak_across_sequences_or_past_total(use_tma):
    """inf / NaN in one sequence's K and V (and NaN past the end of the buffers) must not reach the rows of
    another sequence: the tail block of sequence 0 overlaps sequence 1's first rows."""
    if use_tma and not _tma_possible():
        pytest.skip("no TMA here")
    lens = [20, 12]
    q, k, v, cu_q, cu_k = _make_inputs(lens, lens, 2, 2, 64, torch.float32)
    pad = 16
    kb = torch.full((32 + pad, 2, 64), float("nan"))
    vb = torch.full((32 + pad, 2, 64), float("nan"))
    kb[:32], vb[:32] = k, v
    kb[20:32] = float("inf")
    vb[20:32] = float("-inf")
    kb, vb = kb.to(DEVICE), vb.to(DEVICE)
    out, lse = _run_triton(q, kb[:32], vb[:32], cu_q, cu_k, lens, lens, config=_config(16, 16, use_tma=use_tma))
    ref64, lse64 = varlen_attention_ref(q[:20].double(), k[:20].double(), v[:20].double(),
                                        cu_q[:2], cu_k[:2], return_lse=True)
    assert_verbose_allclose(out[:20], ref64, atol=1e-5, name="sequence 0 beside a non-finite sequence")
    assert_verbose_allclose(lse[:, :20], lse64, atol=1e-5, rtol=1e-5, name="lse of sequence 0")


@runs_kernels
def test_tma_config_rejected_where_unsupported():
    q, k, v, cu_q, cu_k = _make_inputs([17], [17], 2, 2, 40, torch.float32)  # head_dim 40: padded columns
    assert not _kernels().tma_supported(q, k, v)
    with pytest.raises(ValueError, match="use_tma=False"):
        _run_triton(q, k, v, cu_q, cu_k, [17], [17], config=_config(16, 16, use_tma=True))
    q, k, v, cu_q, cu_k = _make_inputs([17], [17], 2, 2, 64, torch.float32)
    strided = torch.zeros(17, 2, 72, device=DEVICE)[:, :, :64]  # heads not packed densely in the row
    assert not _kernels().tma_supported(q, strided, v)


def _property_test(test):
    if given is None:
        return pytest.mark.skip(reason="hypothesis is not installed")(test)
    return settings(max_examples=12, deadline=None, derandomize=True)(given(
        lens=st.lists(st.tuples(st.integers(0, 45), st.integers(0, 45)), min_size=1, max_size=4),
        heads_kv=st.integers(1, 2), group=st.integers(1, 3), head_dim=st.sampled_from([8, 16, 24, 64]),
        block_n=st.sampled_from([16, 32]))(test))


@runs_kernels
@_property_test
def test_random_shapes_match_reference(lens, heads_kv, group, head_dim, block_n):
    """Random batches (empty and key-less sequences included), GQA groups and small / padded head dims."""
    lens_q, lens_k = [a for a, _ in lens], [b for _, b in lens]
    if sum(lens_q) == 0:
        lens_q[0] = 1
    q, k, v, cu_q, cu_k = _make_inputs(lens_q, lens_k, heads_kv * group, heads_kv, head_dim, torch.float32)
    out, lse = _run_triton(q, k, v, cu_q, cu_k, lens_q, lens_k, config=_config(16, block_n))
    ref64, lse64 = varlen_attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k, return_lse=True)
    assert_verbose_allclose(out, ref64, atol=2e-6, rtol=1e-5, name="out")
    assert_verbose_allclose(lse, lse64, atol=2e-6, rtol=1e-6, name="lse")


@runs_kernels
def test_keyless_rows_are_zero_and_lse_minus_inf():
    lens_q, lens_k = [3, 20, 5], [0, 0, 19]
    q, k, v, cu_q, cu_k = _make_inputs(lens_q, lens_k, 2, 2, 64, torch.float32)
    out, lse = _run_triton(q, k, v, cu_q, cu_k, lens_q, lens_k, config=_config(16, 16))
    assert torch.equal(out[:23], torch.zeros_like(out[:23]))
    assert bool(torch.isneginf(lse[:, :23]).all())
    assert bool(torch.isfinite(lse[:, 23:]).all()) and bool(torch.isfinite(out[23:]).all())
    ref, ref_lse = varlen_attention_ref(q, k, v, cu_q, cu_k, return_lse=True)
    assert torch.equal(ref[:23], out[:23]) and torch.equal(ref_lse[:, :23], lse[:, :23])
    # No keys in the whole batch (an empty k / v buffer, max_seqlen_k = 0), through the public op.
    q, k, v, cu_q, cu_k = _make_inputs([2, 3], [0, 0], 2, 2, 64, torch.float32)
    with _registry.use_backend("triton"):
        out, lse = varlen_attention(q, k, v, cu_q, cu_k, 3, 0, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and bool(torch.isneginf(lse).all())


@runs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_canary_padded_inputs_and_poisoned_outputs(dtype):
    """Inputs are views into larger NaN-filled buffers (extra tokens past total and extra channels past
    head_dim); outputs are views into sentinel-filled buffers whose in-range part is NaN-poisoned. Any read
    past a bound turns up as NaN in the result; any write past a bound changes a sentinel; any row left
    unwritten stays NaN."""
    lens_q, lens_k = [17, 0, 30], [9, 4, 30]
    hq, hk, d, pad_tok, pad_d = 2, 1, 40, 7, 8
    total_q, total_k = sum(lens_q), sum(lens_k)
    clean = _make_inputs(lens_q, lens_k, hq, hk, d, dtype)

    def canary(t):
        buf = torch.full((t.shape[0] + pad_tok, t.shape[1], d + pad_d), float("nan"), dtype=dtype, device=DEVICE)
        buf[:t.shape[0], :, :d] = t
        return buf[:t.shape[0], :, :d]

    q, k, v = (canary(t) for t in clean[:3])
    cu_q, cu_k = clean[3], clean[4]
    sentinel = 1234.5
    out_buf = torch.full((total_q + pad_tok, hq, d + pad_d), sentinel, dtype=dtype, device=DEVICE)
    out_buf[:total_q, :, :d] = float("nan")
    lse_buf = torch.full((hq, total_q + pad_tok), sentinel, dtype=torch.float32, device=DEVICE)
    lse_buf[:, :total_q] = float("nan")
    out_view, lse_view = out_buf[:total_q, :, :d], lse_buf[:, :total_q]
    _run_triton(q, k, v, cu_q, cu_k, lens_q, lens_k, config=_config(16, 16), out=out_view, lse=lse_view)
    assert bool((out_buf[total_q:] == sentinel).all()) and bool((out_buf[:, :, d:] == sentinel).all()), \
        "kernel wrote past the end of out"
    assert bool((lse_buf[:, total_q:] == sentinel).all()), "kernel wrote past the end of lse"
    assert not bool(torch.isnan(out_view).any()), "out has NaN: a row was left unwritten or a canary was read"
    assert not bool(torch.isnan(lse_view).any()), "lse has NaN: a row was left unwritten or a canary was read"
    ref64, lse64 = varlen_attention_ref(*(t.double() for t in clean[:3]), cu_q, cu_k, return_lse=True)
    torch_out = varlen_attention_ref(*clean[:3], cu_q, cu_k, upcast=False)
    assert_twice_torch_error(out_view, torch_out, ref64, name="out (canary inputs)")
    assert_verbose_allclose(lse_view, lse64, atol=1e-5, rtol=1e-5, name="lse (canary inputs)")


@runs_kernels
def test_op_through_registry_matches_explicit_launch_and_torch_backend():
    """The public op on the triton backend (its default / autotuned config), with and without content
    validation, and with an oversized max_seqlen, against the torch backend; and a custom softmax_scale."""
    lens = [33, 8]
    q, k, v, cu_q, cu_k = _make_inputs(lens, lens, 2, 2, 64, torch.float32)
    _registry.reset_call_counts()
    with _registry.use_backend("triton"):
        out_t, lse_t = varlen_attention(q, k, v, cu_q, cu_k, 33, 33, softmax_scale=0.3, return_lse=True)
        out_nv = varlen_attention(q, k, v, cu_q, cu_k, 70, 70, softmax_scale=0.3, validate=False)
    with _registry.use_backend("torch"):
        out_r, lse_r = varlen_attention(q, k, v, cu_q, cu_k, 33, 33, softmax_scale=0.3, return_lse=True)
    assert _registry.CALL_COUNTS[("varlen_attention", "triton")] == 2
    assert _registry.CALL_COUNTS[("varlen_attention", "torch")] == 1
    assert torch.equal(out_t, out_nv)
    assert_verbose_allclose(out_t, out_r, atol=2e-6, rtol=1e-5, name="triton vs torch backend")
    assert_verbose_allclose(lse_t, lse_r, atol=2e-6, rtol=1e-6, name="lse triton vs torch backend")
    ref = _per_sequence_sdpa(q, k, v, lens, lens, 0.3)
    assert_verbose_allclose(out_t, ref, atol=2e-6, rtol=1e-5, name="triton vs SDPA loop, scale 0.3")


def test_torch_backend_edge_cases_and_return_types():
    lens_q, lens_k = [4, 0, 6], [0, 5, 6]
    q, k, v, cu_q, cu_k = _make_inputs(lens_q, lens_k, 4, 2, 64, torch.float32, device="cpu")
    with _registry.use_backend("torch"):
        out = varlen_attention(q, k, v, cu_q, cu_k, 6, 6)
        out2, lse = varlen_attention(q, k, v, cu_q, cu_k, 6, 6, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.shape == (10, 4, 64)
    assert torch.equal(out, out2)
    assert torch.equal(out[:4], torch.zeros(4, 4, 64)) and bool(torch.isneginf(lse[:, :4]).all())
    assert_verbose_allclose(out, _per_sequence_sdpa(q, k, v, lens_q, lens_k, 0.125), atol=1e-6, name="torch backend")


def test_reference_lse_chunking_matches_unchunked(monkeypatch):
    q, k, v, cu_q, cu_k = _make_inputs([50, 13], [37, 20], 2, 1, 64, torch.float64, device="cpu")
    _, lse_one = varlen_attention_ref(q, k, v, cu_q, cu_k, return_lse=True)
    monkeypatch.setattr(attn, "_LSE_CHUNK_ELEMENTS", 2 * 37 * 3)  # 3 rows per chunk
    _, lse_chunked = varlen_attention_ref(q, k, v, cu_q, cu_k, return_lse=True)
    assert_verbose_allclose(lse_chunked, lse_one, atol=1e-12, name="chunked lse")


@pytest.mark.parametrize("backend", ["torch"] + (["triton"] if (not triton_missing and CPU_OK) else []))
def test_opcheck(backend):
    lens = [5, 17]
    q, k, v, cu_q, cu_k = _make_inputs(lens, [9, 17], 2, 1, 64, torch.float32)
    with _registry.use_backend(backend):
        for return_lse in (False, True):
            torch.library.opcheck(torch.ops.dvg.varlen_attention.default,
                                  (q, k, v, cu_q, cu_k, 17, 17, 0.0, None, False, return_lse, True))


def test_torch_compile_fullgraph_aot_eager():
    lens = [6, 11]
    q, k, v, cu_q, cu_k = _make_inputs(lens, lens, 2, 2, 64, torch.float32, device="cpu")

    def f(q, k, v):
        out, lse = varlen_attention(q * 2.0, k, v, cu_q, cu_k, 11, 11, return_lse=True)
        return out.sum(-1), lse

    with _registry.use_backend("torch"):
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        got = compiled(q, k, v)
        want = f(q, k, v)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_backend_errors(monkeypatch):
    q, k, v, cu_q, cu_k = _make_inputs([4], [4], 1, 1, 64, torch.float32, device="cpu")
    with _registry.use_backend("cpp"), pytest.raises(RuntimeError, match="no cpp implementation"):
        varlen_attention(q, k, v, cu_q, cu_k, 4, 4)
    monkeypatch.setenv("DVG_BACKEND", "cuda")
    with pytest.raises(ValueError, match="DVG_BACKEND='cuda'"):
        varlen_attention(q, k, v, cu_q, cu_k, 4, 4)
    monkeypatch.setenv("DVG_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend 'triton' was requested but cannot run"):
        varlen_attention(q, k, v, cu_q, cu_k, 4, 4)
    # auto on CPU never uses the interpreter and, with no C++ attention, quietly runs the torch reference.
    monkeypatch.setenv("DVG_BACKEND", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _registry.reset_call_counts()
    varlen_attention(q, k, v, cu_q, cu_k, 4, 4)
    assert _registry.CALL_COUNTS == {("varlen_attention", "torch"): 1}


def _bad_inputs():
    """(id, kwargs overrides, exception, message fragment) for the validation tests."""
    q, k, v, cu_q, cu_k = _make_inputs([3, 5], [4, 6], 4, 2, 64, torch.float32, device="cpu")
    base = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=5, max_seqlen_k=6)
    cases = [
        ("causal", dict(causal=True), NotImplementedError, "causal=True"),
        ("dropout", dict(dropout_p=0.1), NotImplementedError, "dropout_p=0.1"),
        ("q-2d", dict(q=q[:, 0]), ValueError, "q=<tensor shape=(8, 64)"),
        ("q-int", dict(q=q.to(torch.int32)), ValueError, "q.dtype=torch.int32"),
        ("q-fp64", dict(q=q.double(), k=k.double(), v=v.double()), ValueError, "q.dtype=torch.float64"),
        ("k-dtype", dict(k=k.half()), ValueError, "k.dtype=torch.float16"),
        ("v-shape", dict(v=v[:, :1].contiguous()), ValueError, "v.shape=(10, 1, 64)"),
        ("head-dim", dict(q=q[..., :60], k=k[..., :60], v=v[..., :60]), ValueError, "head_dim)=60"),
        ("head-dim-big", dict(q=torch.zeros(8, 4, 264), k=torch.zeros(10, 2, 264), v=torch.zeros(10, 2, 264)),
         ValueError, "[8, 256]"),
        ("k-head-dim", dict(k=k[..., :32], v=v[..., :32]), ValueError, "k.shape[2] (head_dim)=32"),
        ("heads", dict(k=torch.zeros(10, 3, 64), v=torch.zeros(10, 3, 64)), ValueError, "heads_kv)=3"),
        ("last-dim", dict(q=q.transpose(0, 2).contiguous().transpose(0, 2)), ValueError, "contiguous last dim"),
        ("cu-dtype", dict(cu_seqlens_q=cu_q.long()), ValueError, "cu_seqlens_q.dtype=torch.int64"),
        ("cu-2d", dict(cu_seqlens_q=cu_q[None]), ValueError, "cu_seqlens_q.shape=(1, 3)"),
        ("cu-short", dict(cu_seqlens_q=cu_q[:1], cu_seqlens_k=cu_k[:1]), ValueError, "cu_seqlens_q.shape=(1,)"),
        ("cu-strided", dict(cu_seqlens_q=torch.tensor([0, 9, 3, 9, 8, 9], dtype=torch.int32)[::2]), ValueError,
         "cu_seqlens_q.stride()=(2,)"),
        ("cu-batch", dict(cu_seqlens_k=torch.tensor([0, 10], dtype=torch.int32)), ValueError,
         "cu_seqlens_k.shape=(2,)"),
        ("cu-start", dict(cu_seqlens_q=torch.tensor([1, 3, 8], dtype=torch.int32)), ValueError,
         "cu_seqlens_q[0]=1"),
        ("cu-decreasing", dict(cu_seqlens_k=torch.tensor([0, 11, 10], dtype=torch.int32)), ValueError,
         "non-decreasing"),
        ("cu-end", dict(cu_seqlens_q=torch.tensor([0, 3, 7], dtype=torch.int32)), ValueError,
         "cu_seqlens_q[-1]=7"),
        ("max-seqlen-small", dict(max_seqlen_k=5), ValueError, "max_seqlen_k=5"),
        ("max-seqlen-type", dict(max_seqlen_q=5.0), ValueError, "max_seqlen_q=5.0"),
        ("scale", dict(softmax_scale=-1.0), ValueError, "softmax_scale=-1.0"),
        ("device", dict(cu_seqlens_q=cu_q.to("meta")), ValueError, "cu_seqlens_q.device='meta'"),
        ("not-tensor", dict(v=[1.0]), TypeError, "v=[1.0]"),
    ]
    return base, cases


_BASE, _BAD = _bad_inputs()


@pytest.mark.parametrize("case", _BAD, ids=[c[0] for c in _BAD])
def test_validation_errors_name_argument_value_and_allowed(case):
    _, overrides, exc, fragment = case
    kwargs = {**_BASE, **overrides}
    with _registry.use_backend("torch"), pytest.raises(exc) as info:
        varlen_attention(**kwargs)
    message = str(info.value)
    assert fragment in message and "allowed:" in message, message


def test_validate_false_skips_only_content_checks():
    q, k, v, cu_q, _ = _make_inputs([3, 5], [4, 6], 2, 2, 64, torch.float32, device="cpu")
    wrong_end = torch.tensor([0, 3, 7], dtype=torch.int32)
    with _registry.use_backend("torch"):
        with pytest.raises(ValueError, match="cu_seqlens_k\\[-1\\]=7"):
            varlen_attention(q, k, v, cu_q, wrong_end, 5, 6)
        varlen_attention(q, k[:7], v[:7], cu_q, wrong_end, 5, 6, validate=False)  # content unchecked: runs
        with pytest.raises(ValueError, match="cu_seqlens_q.dtype"):
            varlen_attention(q, k, v, cu_q.long(), wrong_end, 5, 6, validate=False)


def test_package_imports_and_runs_without_triton(tmp_path):
    """The op module never imports triton at import time; with triton blocked, auto and torch still run."""
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "from dvg_engine.ops.attention import varlen_attention, cu_seqlens_from_lengths\n"
        "from dvg_engine.ops import _registry\n"
        "cu = cu_seqlens_from_lengths([3, 4])\n"
        "q = torch.randn(7, 2, 64)\n"
        "out = varlen_attention(q, q, q, cu, cu, 4, 4)\n"
        "assert out.shape == (7, 2, 64)\n"
        "assert 'triton' not in sys.modules\n"
        "try:\n"
        "    with _registry.use_backend('triton'):\n"
        "        varlen_attention(q, q, q, cu, cu, 4, 4)\n"
        "except RuntimeError as e:\n"
        "    assert 'triton is not installed' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('expected RuntimeError')\n"
        "print('OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DVG_BACKEND"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


@runs_kernels
def test_benchmark_check_sweep_runs(capsys):
    """`benchmarks/bench_attention.py --check` is what a GPU host runs first: its code path (autotuned op,
    explicit configs, comparison, PASS/FAIL report) runs here on small shapes."""
    sys.path.insert(0, str(_REPO_ROOT / "benchmarks"))
    try:
        import bench_attention
    finally:
        sys.path.pop(0)
    # On a GPU the config sweep is test_gpu_every_candidate_config's job (compiles cost seconds each).
    ok = bench_attention.check(DEVICE, dtypes=(torch.float16,), shapes=[([17, 5], [17, 9], 24, 24, 128)],
                               sweep_dtype=None if on_gpu else torch.float16)
    printed = capsys.readouterr().out
    assert ok, printed
    assert printed.count("PASS  ") >= (1 if on_gpu else 2) and "FAIL" not in printed, printed
    assert bench_attention.flops([3, 4], [5, 6], 2, 8) == 4.0 * (15 + 24) * 2 * 8


_AOT_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
import bench_attention
from dvg_engine.kernels.varlen_attention import AttentionConfig
results = []
for arch, dtype, head_dim, tile in json.loads(sys.argv[1]):
    try:
        results.append(bench_attention.aot_compile(arch, dtype, head_dim, AttentionConfig(*tile), True))
    except Exception as exc:
        results.append({"error": f"{type(exc).__name__}: {exc}"[:2000]})
print("RESULTS " + json.dumps(results))
"""

# (arch, dtype, head_dim, (block_m, block_n, num_warps, num_stages, use_tma)) and the target's shared
# memory per block (opt-in maximum).
_AOT_CASES = [(90, "bf16", 128, (128, 128, 8, 2, True)), (90, "bf16", 128, (128, 64, 8, 3, False)),
              (80, "fp16", 40, (64, 64, 4, 3, False))]
_SHARED_LIMIT = {90: 232448, 80: 166912}


@pytest.mark.skipif(triton_missing or on_gpu, reason="needs triton; on a GPU the real kernels run instead")
def test_kernel_compiles_for_gpu_targets_without_a_gpu():
    """Catches GPU-only compile errors (the interpreter accepts code a GPU compile rejects) and checks what
    production configs compile to: Hopper warpgroup MMA, TMA loads where asked, shared memory that fits.
    Runs in a subprocess because the kernel module must be imported without TRITON_INTERPRET."""
    import json

    import triton
    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 5):
        pytest.skip(f"the ahead-of-time signature format used here is that of Triton >= 3.5, not {triton.__version__}")
    cases = [c for c in _AOT_CASES if not c[3][4] or _kernels()._tensor_descriptor_class() is not None]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, json.dumps(cases), str(_REPO_ROOT / "benchmarks")],
                            capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    for (arch, dtype, head_dim, tile), got in zip(cases, json.loads(lines[0][len("RESULTS "):])):
        label = f"sm{arch} {dtype} d={head_dim} {tile}"
        assert "error" not in got, f"{label}: {got.get('error')}"
        assert got["shared"] <= _SHARED_LIMIT[arch], f"{label}: shared memory {got['shared']}"
        assert got["wgmma"] == (arch >= 90), f"{label}: wgmma {got['wgmma']}"
        assert got["tma"] == tile[4], f"{label}: TMA loads {got['tma']}"
        assert got.get("spill_stack", 0) == 0 or tile[2] == 4, f"{label}: spills {got.get('spill_stack')} bytes"


# ---------------------------------------------------------------------------------------------------
# GPU (skip without CUDA)
# ---------------------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("lens_q,lens_k,heads_kv", [
    ([2160 + 120, 1080 + 256], [2160 + 120, 1080 + 256], 24),  # two samples on different stage grids + text
    ([3600 + 77], [3600 + 77], 24),
    ([1000, 0, 2500], [1000, 300, 2500], 8),                    # empty query sequence, GQA 24/8
])
def test_gpu_hunyuan_shapes_autotuned(dtype, lens_q, lens_k, heads_kv):
    q, k, v, cu_q, cu_k = _make_inputs(lens_q, lens_k, 24, heads_kv, 128, dtype, device="cuda")
    with _registry.use_backend("triton"):
        out, lse = varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), return_lse=True)
    chosen = _kernels().best_config(128, dtype, True, max(lens_q), max(lens_k))
    assert chosen in _kernels().candidate_configs(128, 2, _kernels().tma_supported(q, k, v)), chosen
    ref64, lse64 = varlen_attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k, return_lse=True)
    torch_out = varlen_attention_ref(q, k, v, cu_q, cu_k, upcast=False)
    assert_twice_torch_error(out, torch_out, ref64, name=f"out {dtype}")
    assert_verbose_allclose(lse, lse64, atol=1e-4, rtol=1e-5, name=f"lse {dtype}")


@needs_cuda
@pytest.mark.parametrize("config", [(64, 64, 4, 3, False), (128, 128, 8, 2, False), (64, 64, 4, 3, True)], ids=str)
def test_gpu_explicit_configs_fp32_ieee(config):
    """fp32 inputs must not silently run in TF32: every config matches an fp64 reference at fp32 accuracy."""
    lens = [300, 129, 1]
    q, k, v, cu_q, cu_k = _make_inputs(lens, lens, 4, 2, 64, torch.float32, device="cuda")
    cfg = _kernels().AttentionConfig(*config)
    if cfg.use_tma and not _kernels().tma_supported(q, k, v):
        pytest.skip("this GPU has no TMA")
    out, lse = _run_triton(q, k, v, cu_q, cu_k, lens, lens, config=cfg)
    ref64, lse64 = varlen_attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k, return_lse=True)
    torch_out = varlen_attention_ref(q, k, v, cu_q, cu_k, upcast=False)
    assert_twice_torch_error(out, torch_out, ref64, name=f"fp32 {config}")
    assert_verbose_allclose(lse, lse64, atol=1e-5, rtol=1e-5, name=f"lse {config}")


@needs_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_every_candidate_config(head_dim, dtype=torch.bfloat16):
    """Each config the autotuner may pick compiles and is correct (the autotuner would otherwise only
    surface a broken config on the shape that happens to select it)."""
    kernels = _kernels()
    lens = [700, 129, 1, 0, 333]
    q, k, v, cu_q, cu_k = _make_inputs(lens, lens, 8, 4, head_dim, dtype, device="cuda")
    ref64 = varlen_attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k)
    torch_out = varlen_attention_ref(q, k, v, cu_q, cu_k, upcast=False)
    configs = kernels.candidate_configs(kernels.block_d_for(head_dim), q.element_size(),
                                        kernels.tma_supported(q, k, v))
    assert configs
    for config in configs:
        try:
            out, _ = _run_triton(q, k, v, cu_q, cu_k, lens, lens, config=config)
        except Exception as exc:
            if type(exc).__name__ == "OutOfResources":
                continue  # does not fit this GPU; the autotuner skips it the same way
            raise
        assert_twice_torch_error(out, torch_out, ref64, name=f"{config}")


@needs_cuda
def test_gpu_int64_offsets():
    """Token offsets × token stride past 2**31 elements (a strided view into a 6 GiB buffer)."""
    stride_tok = 1 << 20
    lens = [1500, 1600]
    total = sum(lens)
    try:
        buf = torch.zeros(total * stride_tok, dtype=torch.float16, device="cuda")
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for the 6 GiB buffer")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = buf.as_strided((total, 2, 64), (stride_tok, 64, 1))
    q.copy_(torch.randn(total, 2, 64, device="cuda", dtype=torch.float16, generator=gen))
    assert (total - 1) * stride_tok > 2 ** 31
    cu = cu_seqlens_from_lengths(lens, "cuda")
    with _registry.use_backend("triton"):
        out = varlen_attention(q, q, q, cu, cu, max(lens), max(lens))
    qc = q.contiguous()
    del buf, q
    ref64 = varlen_attention_ref(qc.double(), qc.double(), qc.double(), cu, cu)
    torch_out = varlen_attention_ref(qc, qc, qc, cu, cu, upcast=False)
    assert_twice_torch_error(out, torch_out, ref64, name="int64 offsets")


@needs_cuda
def test_gpu_launches_on_the_tensors_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    lens = [100, 50]
    q, k, v, cu_q, cu_k = _make_inputs(lens, lens, 2, 2, 64, torch.float16, device="cuda:1")
    with torch.cuda.device(0), _registry.use_backend("triton"):
        out = varlen_attention(q, k, v, cu_q, cu_k, 100, 100)
    assert out.device == q.device
    assert_verbose_allclose(out, varlen_attention_ref(q, k, v, cu_q, cu_k), atol=2e-3, name="cuda:1")
