"""Out variants of the pack / unpack / RoPE-pack / modulated-LayerNorm ops (`dvg::*_out`, the wrappers' `out=`):
every backend writes into NaN-poisoned, canary-padded, non-contiguous output views exactly what the allocating op
returns; the C++ copy kernel splits its spans over threads correctly at sizes that use both threads; opcheck
and torch.compile see the mutation; outputs are validated (shape, dtype, device, strides, self-overlap, overlap
with inputs), and the C++ kernels check cu_* values themselves, so validate=False cannot make them write out of
bounds.

With DVG_TEST_GPU=1 on a CUDA machine the Triton kernels run on CUDA in fp32, fp16 and bf16.
"""
from __future__ import annotations

import pytest
import torch

from _backends import DEVICE, skip_unless_runs
from _tolerances import assert_pointwise_close
from dvg_engine.ops import _registry
from dvg_engine.ops import layer_norm as LN
from dvg_engine.ops import pack as P
from test_pack import BACKEND_DTYPES, as_stream, assert_canaries_intact, canary_view, make_inputs, rope_axes_for

ALL_BACKENDS = ["torch"] + sorted({b for b, _ in BACKEND_DTYPES})


def _poisoned(shape, dtype, seed=0):
    """A NaN-filled view inside a NaN canary buffer: every element the op fails to write stays NaN."""
    return canary_view(tuple(shape), dtype, fill=float("nan"), seed=seed)


def _runs(backend):
    if backend != "torch":
        skip_unless_runs(backend)


# ----------------------------------------------------------------------------------------------------
# Results: out variant == allocating op, every element written, nothing outside
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32)] + BACKEND_DTYPES)
@pytest.mark.parametrize("case", ["awkward", "unequal"])
@pytest.mark.parametrize("text_layout", ["padded", "stream"])
def test_pack_unpack_out_match_allocating(backend, dtype, case, text_layout):
    _runs(backend)
    d = make_inputs(case, 2, 64, dtype)
    text, cu_text, text_len = d["text"], None, d["text_len"]
    if text_layout == "stream":
        text, cu_text = as_stream(d)
        text_len = text.shape[0]
    args = (d["latent"], text, d["cu_latent"], d["cu_seqlens"], d["total"])
    with _registry.use_backend(backend):
        expected = P.pack_tokens(*args, cu_text=cu_text)
        out, out_buf, out_in = _poisoned(expected.shape, dtype)
        assert P.pack_tokens(*args, cu_text=cu_text, out=out) is out
        lat_want, txt_want = P.unpack_tokens(expected, d["cu_latent"], d["cu_seqlens"], d["latent"].shape[0], text_len,
                                             cu_text=cu_text)
        lat_out, lat_buf, lat_in = _poisoned(lat_want.shape, dtype, seed=1)
        txt_out, txt_buf, txt_in = _poisoned(txt_want.shape, dtype, seed=2)
        got = P.unpack_tokens(out, d["cu_latent"], d["cu_seqlens"], d["latent"].shape[0], text_len, cu_text=cu_text,
                              latent_out=lat_out, text_out=txt_out)
    assert got[0] is lat_out and got[1] is txt_out
    assert not out.is_contiguous() and not lat_out.is_contiguous()  # the strided paths are the ones exercised
    assert torch.equal(out, expected), "pack_tokens_out differs from pack_tokens"
    assert torch.equal(lat_out, lat_want) and torch.equal(txt_out, txt_want), "unpack_tokens_out differs"
    assert torch.equal(lat_out, d["latent"])
    for buf, inside, name in ((out_buf, out_in, "out"), (lat_buf, lat_in, "latent_out"), (txt_buf, txt_in, "text_out")):
        assert_canaries_intact(buf, inside, name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_out_into_slices_of_one_buffer(backend):
    """The arena use case: pack into a slice of a larger preallocated buffer, unpack into two disjoint slices of
    another (contiguous rows, so the C++ dense memcpy path runs)."""
    _runs(backend)
    d = make_inputs("awkward", 2, 64, torch.float32, canary=False)
    total, total_latent, text_len, batch = d["total"], d["latent"].shape[0], d["text_len"], len(d["text_lens"])
    arena = torch.full((total + 10, 2, 64), float("nan"), device=DEVICE)
    args = (d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], total)
    with _registry.use_backend(backend):
        expected = P.pack_tokens(*args)
        P.pack_tokens(*args, out=arena[5:5 + total])
        outputs = torch.full((total_latent + batch * text_len + 3, 2, 64), float("nan"), device=DEVICE)
        lat_out = outputs[:total_latent]
        txt_out = outputs[total_latent + 3:].view(batch, text_len, 2, 64)
        P.unpack_tokens(expected, d["cu_latent"], d["cu_seqlens"], total_latent, text_len, latent_out=lat_out,
                        text_out=txt_out)
    assert torch.equal(arena[5:5 + total], expected)
    assert bool(arena[:5].isnan().all()) and bool(arena[5 + total:].isnan().all())
    assert torch.equal(lat_out, d["latent"])
    assert bool(outputs[total_latent:total_latent + 3].isnan().all())
    for b, n in enumerate(d["text_lens"]):
        assert torch.equal(txt_out[b, :n], d["text"][b, :n]) and bool((txt_out[b, n:] == 0).all())


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32)] + BACKEND_DTYPES)
def test_pack_qk_rope_out_matches_allocating(backend, dtype):
    _runs(backend)
    d = make_inputs("awkward", 2, 64, dtype)
    k_latent = canary_view(tuple(d["latent"].shape), dtype, seed=7)[0]
    k_text = canary_view(tuple(d["text"].shape), dtype, seed=8)[0]
    args = (d["latent"], k_latent, d["text"], k_text, d["cu_latent"], d["cu_seqlens"], d["grid_sizes"], d["total"],
            rope_axes_for(64))
    with _registry.use_backend(backend):
        q_want, k_want = P.pack_qk_rope(*args)
        q_out, q_buf, q_in = _poisoned(q_want.shape, dtype)
        k_out, k_buf, k_in = _poisoned(k_want.shape, dtype, seed=1)
        q, k = P.pack_qk_rope(*args, q_out=q_out, k_out=k_out)
    assert q is q_out and k is k_out
    assert torch.equal(q_out, q_want) and torch.equal(k_out, k_want)
    assert_canaries_intact(q_buf, q_in, "q_out")
    assert_canaries_intact(k_buf, k_in, "k_out")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("text_layout", ["padded", "stream"])
def test_pack_qk_rope_out_q_and_k_outputs_with_different_strides(backend, text_layout):
    """q_out and k_out are independent caller buffers: each must be written through its own strides (the Triton
    kernel once stored k through q_out's strides — k landed in the wrong rows of its buffer, or past its end)."""
    _runs(backend)
    d = make_inputs("awkward", 2, 64, torch.float32, canary=False)
    text, k_text, cu_text = d["text"], d["text"] * -0.5, None
    if text_layout == "stream":
        text, cu_text = as_stream(d)
        k_text = text * -0.5
    args = (d["latent"], d["latent"] * 2.0, text, k_text, d["cu_latent"], d["cu_seqlens"], d["grid_sizes"],
            d["total"], rope_axes_for(64))
    shape = (d["total"], 2, 64)
    q_out, q_buf, q_in = canary_view(shape, torch.float32, pad_last=3, pad_lead=2, fill=float("nan"))
    k_out, k_buf, k_in = canary_view(shape, torch.float32, pad_last=17, pad_lead=5, fill=float("nan"))
    assert q_out.stride() != k_out.stride()
    with _registry.use_backend(backend):
        q_want, k_want = P.pack_qk_rope(*args, cu_text=cu_text)
        P.pack_qk_rope(*args, cu_text=cu_text, q_out=q_out, k_out=k_out)
    assert torch.equal(q_out, q_want) and torch.equal(k_out, k_want)
    assert_canaries_intact(q_buf, q_in, "q_out")
    assert_canaries_intact(k_buf, k_in, "k_out")


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32)] + BACKEND_DTYPES)
def test_modulated_layer_norm_out_matches_allocating(backend, dtype):
    _runs(backend)
    gen = torch.Generator().manual_seed(0)
    lengths, dim = [1, 17, 0, 97], 200
    cu = P.packed_layout(lengths, [0] * len(lengths), DEVICE)[1]
    x = canary_view((sum(lengths), dim), dtype, seed=3)[0]
    emb = (torch.randn(len(lengths), 6 * dim, generator=gen) * 0.5).to(dtype).to(DEVICE)
    shift, scale = emb.chunk(6, dim=1)[:2]
    with _registry.use_backend(backend):
        want = LN.modulated_layer_norm(x, cu, scale, shift)
        out, buf, inside = _poisoned(want.shape, dtype)
        assert LN.modulated_layer_norm(x, cu, scale, shift, out=out) is out
    assert torch.equal(out, want)
    assert_canaries_intact(buf, inside, "out")
    if dtype == torch.float32:
        assert_pointwise_close(out, LN.modulated_layer_norm_reference(x, cu, scale, shift), name=backend)


@pytest.fixture
def two_torch_threads():
    """At least two intra-op threads, so at::parallel_for really splits the rows (a 1-core runner, or a thread
    count left at 1, would otherwise run the split tests on one thread); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the C++ backend runs on CPU tensors")
@pytest.mark.parametrize("contiguous_out", [True, False])
def test_cpp_spans_split_over_threads(contiguous_out, two_torch_threads):
    """Enough bytes (~3 MB) that the C++ copy splits its rows over both threads, with thread boundaries inside
    spans and 40 samples of uneven sizes (some empty, some text-only), into poisoned outputs."""
    skip_unless_runs("cpp")
    assert torch.get_num_threads() >= 2
    gen = torch.Generator().manual_seed(4)
    latent_lens = [int(n) for n in torch.randint(0, 400, (40,), generator=gen)]
    text_lens = [int(n) for n in torch.randint(0, 30, (40,), generator=gen)]
    latent_lens[3], text_lens[3] = 0, 0
    latent_lens[7] = 0
    text_len = 30
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, text_lens)
    latent = torch.randn(sum(latent_lens), 2, 64, generator=gen)
    text = torch.randn(40, text_len, 2, 64, generator=gen)
    assert total * 2 * 64 * 4 > 2 * 1024 * 1024  # several 256 KiB tasks: both threads get rows (with >= 2 threads)
    if contiguous_out:
        out = torch.full((total, 2, 64), float("nan"))
        lat_out = torch.full(latent.shape, float("nan"))
        txt_out = torch.full(text.shape, float("nan"))
    else:
        out = _poisoned((total, 2, 64), torch.float32)[0]
        lat_out = _poisoned(tuple(latent.shape), torch.float32)[0]
        txt_out = _poisoned(tuple(text.shape), torch.float32)[0]
    with _registry.use_backend("torch"):
        expected = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
        lat_want, txt_want = P.unpack_tokens(expected, cu_latent, cu_seqlens, latent.shape[0], text_len)
    with _registry.use_backend("cpp"):
        P.pack_tokens(latent, text, cu_latent, cu_seqlens, total, out=out)
        P.unpack_tokens(expected, cu_latent, cu_seqlens, latent.shape[0], text_len, latent_out=lat_out,
                        text_out=txt_out)
        allocated = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
    assert torch.equal(out, expected) and torch.equal(allocated, expected)
    assert torch.equal(lat_out, lat_want) and torch.equal(txt_out, txt_want)


# ----------------------------------------------------------------------------------------------------
# opcheck, compile, backend counts
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_opcheck_out_ops(backend):
    _runs(backend)
    d = make_inputs("unequal", 2, 64, torch.float32, canary=False)
    axes = [16, 24, 24]
    inv = P.rope_inv_freq(axes, 256.0, DEVICE)
    total, total_latent, text_len = d["total"], d["latent"].shape[0], d["text_len"]
    new = lambda *shape: torch.empty(shape, device=DEVICE)  # noqa: E731
    with _registry.use_backend(backend):
        torch.library.opcheck(torch.ops.dvg.pack_tokens_out.default,
                              (d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], total, new(total, 2, 64)))
        packed = P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], total)
        torch.library.opcheck(torch.ops.dvg.unpack_tokens_out.default,
                              (packed, d["cu_latent"], d["cu_seqlens"], total_latent, text_len,
                               new(total_latent, 2, 64), new(2, text_len, 2, 64)))
        torch.library.opcheck(torch.ops.dvg.pack_qk_rope_out.default,
                              (d["latent"], d["latent"], d["text"], d["text"], d["cu_latent"], d["cu_seqlens"],
                               d["grid_sizes"], inv, axes, total, new(total, 2, 64), new(total, 2, 64)))
        stream, cu_text = as_stream(d)
        stream = stream.contiguous()
        torch.library.opcheck(torch.ops.dvg.unpack_tokens_out.default,
                              (packed, d["cu_latent"], d["cu_seqlens"], total_latent, stream.shape[0],
                               new(total_latent, 2, 64), new(stream.shape[0], 2, 64), cu_text))
        x = packed.flatten(1)
        scale, shift = (torch.randn(2, 128, device=DEVICE) for _ in range(2))
        torch.library.opcheck(torch.ops.dvg.modulated_layer_norm_out.default,
                              (x, d["cu_seqlens"], scale, shift, new(total, 128), 1e-6))


def test_compile_fullgraph_out_variants():
    """A step that owns its buffers: pack into a preallocated stream, unpack into preallocated outputs, LayerNorm
    into a preallocated tensor — one graph under torch.compile(fullgraph=True), equal to eager."""
    d = make_inputs("unequal", 2, 64, torch.float32, canary=False)
    total, total_latent, text_len = d["total"], d["latent"].shape[0], d["text_len"]
    scale, shift = (torch.randn(2, 128, device=DEVICE) for _ in range(2))

    def step(latent, text, cu_latent, cu_seqlens, packed, lat_out, txt_out, normed):
        P.pack_tokens(latent, text, cu_latent, cu_seqlens, total, validate=False, out=packed)
        P.unpack_tokens(packed * 2, cu_latent, cu_seqlens, total_latent, text_len, validate=False,
                        latent_out=lat_out, text_out=txt_out)
        LN.modulated_layer_norm(packed.flatten(1), cu_seqlens, scale, shift, validate=False, out=normed)
        return lat_out.sum() + txt_out.sum() + normed.sum()

    def buffers():
        return (torch.empty(total, 2, 64, device=DEVICE), torch.empty(total_latent, 2, 64, device=DEVICE),
                torch.empty(2, text_len, 2, 64, device=DEVICE), torch.empty(total, 128, device=DEVICE))

    inputs = (d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"])
    eager_buffers, compiled_buffers = buffers(), buffers()
    eager = step(*inputs, *eager_buffers)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*inputs, *compiled_buffers)
    assert torch.equal(compiled, eager)
    for got, want in zip(compiled_buffers, eager_buffers):  # the mutations reach the caller's tensors
        assert torch.equal(got, want)
    assert torch.equal(compiled_buffers[1], d["latent"] * 2)


def test_out_ops_count_their_backend():
    d = make_inputs("single", 1, 16, torch.float32, canary=False)
    out = torch.empty(d["total"], 1, 16, device=DEVICE)
    _registry.reset_call_counts()
    with _registry.use_backend("torch"):
        P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"], out=out)
    assert _registry.CALL_COUNTS == {("pack_tokens_out", "torch"): 1}
    if DEVICE.type == "cpu" and _registry.cpp_available():
        _registry.reset_call_counts()
        with _registry.use_backend("auto"):
            P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"], out=out)
        assert _registry.CALL_COUNTS == {("pack_tokens_out", "cpp"): 1}


# ----------------------------------------------------------------------------------------------------
# Validation of the outputs
# ----------------------------------------------------------------------------------------------------

def _pack_case():
    d = make_inputs("unequal", 2, 16, torch.float32, canary=False)
    return d, (d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"])


@pytest.mark.parametrize("make_out,exc,pattern", [
    (lambda d: torch.empty(d["total"] + 1, 2, 16, device=DEVICE), ValueError,
     r"dvg::pack_tokens_out: out=<tensor shape=\(75, 2, 16\).* is invalid; allowed: shape \(74, 2, 16\)"),
    (lambda d: torch.empty(d["total"], 2, 16, dtype=torch.float16, device=DEVICE), ValueError,
     r"out=<tensor .*dtype=torch.float16.*allowed: dtype torch.float32 \(the dtype of the inputs\)"),
    (lambda d: torch.empty(d["total"], 16, 2, device=DEVICE).transpose(1, 2), ValueError,
     r"out=.*allowed: a contiguous last dimension \(stride 1\)"),
    (lambda d: torch.empty(1, 2, 16, device=DEVICE).expand(d["total"], 2, 16), ValueError,
     r"out=.*allowed: a layout in which no two elements share memory"),
    (lambda d: torch.empty(d["total"], 2, 16, device="meta"), ValueError,
     r"out=<tensor .*device=meta>.*allowed: device (cpu|cuda)"),
    (lambda d: [0.0] * 3, TypeError, r"dvg::pack_tokens_out: out=\[0.0, 0.0, 0.0\] is invalid; allowed: a torch.Tensor"),
])
def test_pack_out_validation(make_out, exc, pattern):
    d, args = _pack_case()
    with pytest.raises(exc, match=pattern):
        P.pack_tokens(*args, out=make_out(d))


def test_out_must_not_overlap_inputs_or_other_outputs():
    d, args = _pack_case()
    total, total_latent = d["total"], d["latent"].shape[0]
    arena = torch.empty(total + total_latent, 2, 16, device=DEVICE)
    arena[:total_latent] = d["latent"]
    with pytest.raises(ValueError, match=r"dvg::pack_tokens_out: out=.*allowed: memory that does not overlap latent"):
        P.pack_tokens(arena[:total_latent], *args[1:], out=arena[total_latent - 1:total_latent - 1 + total])
    P.pack_tokens(arena[:total_latent], *args[1:], out=arena[total_latent:])  # adjacent, not overlapping: fine
    text_arena = torch.empty(200, 2, 16, device=DEVICE)
    text_in_arena = text_arena[:32].view(d["text"].shape).copy_(d["text"])
    with pytest.raises(ValueError, match=r"out=.*allowed: memory that does not overlap text"):
        P.pack_tokens(d["latent"], text_in_arena, *args[2:], out=text_arena[31:31 + total])
    packed = P.pack_tokens(*args)
    lat_out = torch.empty(total_latent, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"dvg::unpack_tokens_out: latent_out=.*memory that does not overlap packed"):
        P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], total_latent, d["text_len"],
                        latent_out=packed[:total_latent], text_out=torch.empty(2, d["text_len"], 2, 16, device=DEVICE))
    both = torch.empty(total_latent + 2 * d["text_len"], 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"latent_out=.*memory that does not overlap text_out"):
        P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], total_latent, d["text_len"],
                        latent_out=both[:total_latent], text_out=both[1:1 + 2 * d["text_len"]].view(2, -1, 2, 16))
    with pytest.raises(TypeError, match=r"text_out=None is invalid; allowed: a torch.Tensor \(latent_out and text_out are given together\)"):
        P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], total_latent, d["text_len"], latent_out=lat_out)
    with pytest.raises(ValueError, match=r"dvg::unpack_tokens_out: text_out=<tensor shape=\(2, 15, 2, 16\).*allowed: "
                                         r"shape \(2, 16, 2, 16\)"):
        P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], total_latent, d["text_len"], latent_out=lat_out,
                        text_out=torch.empty(2, 15, 2, 16, device=DEVICE))


def test_rope_and_layer_norm_out_validation():
    d, _ = _pack_case()
    total = d["total"]
    rope = (d["latent"], d["latent"], d["text"], d["text"], d["cu_latent"], d["cu_seqlens"], d["grid_sizes"], total,
            (2, 6, 8))
    q_out = torch.empty(total, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"dvg::pack_qk_rope_out: q_out=.*memory that does not overlap k_out"):
        P.pack_qk_rope(*rope, q_out=q_out, k_out=q_out)
    with pytest.raises(TypeError, match=r"k_out=None is invalid"):
        P.pack_qk_rope(*rope, q_out=q_out)
    x = torch.randn(7, 16, device=DEVICE)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32, device=DEVICE)
    scale, shift = torch.zeros(2, 16, device=DEVICE), torch.zeros(2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"dvg::modulated_layer_norm_out: out=<tensor shape=\(7, 8\).*allowed: shape \(7, 16\)"):
        LN.modulated_layer_norm(x, cu, scale, shift, out=torch.empty(7, 8, device=DEVICE))
    with pytest.raises(ValueError, match=r"dvg::modulated_layer_norm_out: out=.*memory that does not overlap x"):
        LN.modulated_layer_norm(x, cu, scale, shift, out=x)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the C++ backend runs on CPU tensors")
def test_cpp_kernels_check_cu_values_themselves():
    """validate=False skips the Python content checks; the C++ kernels still refuse cu_* values that would
    index outside their tensors (RuntimeError, no crash, nothing written)."""
    skip_unless_runs("cpp")
    d, args = _pack_case()
    latent, text, cu_latent, cu_seqlens, total = args
    out = torch.full((total, 2, 16), float("nan"))
    bad_seq = torch.tensor([0, 41, 90], dtype=torch.int32)  # ends past `total`
    with _registry.use_backend("cpp"):
        with pytest.raises(RuntimeError, match=r"cu_seqlens\[-1\]=90 must equal the row count 74"):
            P.pack_tokens(latent, text, cu_latent, bad_seq, total, validate=False, out=out)
        with pytest.raises(RuntimeError, match=r"sample 0 would get 30 text tokens"):
            P.pack_tokens(latent, text, cu_latent, torch.tensor([0, 60, 74], dtype=torch.int32), total,
                          validate=False)
        with pytest.raises(RuntimeError, match=r"cu_latent must be non-decreasing"):
            P.unpack_tokens(P.pack_tokens(*args), torch.tensor([0, 70, 60], dtype=torch.int32), cu_seqlens, 60,
                            d["text_len"], validate=False)
        x = torch.randn(7, 16)
        with pytest.raises(RuntimeError, match=r"cu_seqlens must run from 0 to 7"):
            LN.modulated_layer_norm(x, torch.tensor([0, 3, 9], dtype=torch.int32), torch.zeros(2, 16),
                                    torch.zeros(2, 16), validate=False, out=torch.empty(7, 16))
    assert bool(out.isnan().all())


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the C++ backend runs on CPU tensors")
def test_cpp_rope_pack_refuses_k_of_another_dtype_than_q():
    """The C++ RoPE pack reads k and writes k_out with q's element type, so the private op itself must refuse a k
    of another dtype (the public wrapper already does): reinterpreted, it wrote past k_out's end."""
    skip_unless_runs("cpp")
    import dvg_engine._C  # noqa: F401  (registers the private dvg::_cpp_* ops)
    d = make_inputs("unequal", 2, 64, torch.float32, canary=False)
    q, text, axes = d["latent"], d["text"], rope_axes_for(64)
    inv_freq = P.rope_inv_freq(axes, 256.0)
    with pytest.raises(RuntimeError, match=r"k_latent is Half but q_latent is Float; q and k must share one dtype"):
        torch.ops.dvg._cpp_pack_qk_rope_out(q, q.half(), text, text.half(), d["cu_latent"], d["cu_seqlens"],
                                            d["grid_sizes"], inv_freq, axes, d["total"], None,
                                            torch.empty(d["total"], 2, 64), torch.empty(d["total"], 2, 64).half())


def _out_step_setup(device, dtype):
    """Inputs and caller-owned output buffers of one out-variant step (pack -> unpack -> LayerNorm) on `device`."""
    d = make_inputs("unequal", 2, 64, dtype, canary=False)
    d = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}
    total, total_latent, text_len = d["total"], d["latent"].shape[0], d["text_len"]
    gen = torch.Generator().manual_seed(1)
    scale, shift = ((0.1 * torch.randn(2, 128, generator=gen)).to(device, dtype) for _ in range(2))
    buffers = (torch.empty(total, 2, 64, device=device, dtype=dtype),
               torch.empty(total_latent, 2, 64, device=device, dtype=dtype),
               torch.empty(2, text_len, 2, 64, device=device, dtype=dtype),
               torch.empty(total, 128, device=device, dtype=dtype))

    def step():
        packed, lat_out, txt_out, normed = buffers
        P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], total, validate=False, out=packed)
        P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], total_latent, text_len, validate=False,
                        latent_out=lat_out, text_out=txt_out)
        LN.modulated_layer_norm(packed.view(total, 128), d["cu_seqlens"], scale, shift, validate=False, out=normed)
    return d, buffers, step


def test_out_variant_step_makes_no_host_sync(cuda_device):
    """What capturing the step in a CUDA graph needs (the GPU test below captures it): with validate=False the
    out-variant step reads nothing back and copies nothing from the host — on a GPU, or the simulated device."""
    from _backends import synchronising_calls
    d, buffers, step = _out_step_setup(cuda_device, torch.float32)
    step()  # warm-up: on a GPU the first call compiles the kernels
    assert synchronising_calls(step) == 0
    assert torch.equal(buffers[1], d["latent"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_out_variants_into_caller_buffers():
    """What a serving stack does: capture pack → unpack → LayerNorm writing into buffers it owns, change the inputs
    in place, replay; the caller's buffers must then hold what an eager run computes (no allocation or host sync
    inside the graph with validate=False)."""
    d, buffers, step = _out_step_setup(torch.device("cuda"), torch.bfloat16)
    with _registry.use_backend("triton"):
        step()  # compiles the kernels before capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        d["latent"].mul_(0.5).add_(0.25)
        d["text"].mul_(-1.0)
        graph.replay()
        torch.cuda.synchronize()
        replayed = [t.clone() for t in buffers]
        step()
    for got, want in zip(replayed, buffers):
        assert torch.equal(got, want)
    assert torch.equal(buffers[1], d["latent"])


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the C++ backend runs on CPU tensors")
@pytest.mark.parametrize("seed", range(12))
def test_cpp_random_layouts_into_strided_outputs(seed, two_torch_threads):
    """Random batches (empty samples, text-only samples, no text), 2-D or 3-D tokens, padded or stream text,
    inputs and outputs as strided views of NaN buffers (heads apart or adjacent): the C++ span kernels write
    exactly the reference's values and nothing else. Sizes up to ~1 MB so both threads share some of them."""
    skip_unless_runs("cpp")
    gen = torch.Generator().manual_seed(100 + seed)

    def randint(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    batch = randint(1, 6)
    latent_lens = [randint(0, 900) * randint(0, 1) for _ in range(batch)]
    text_len = randint(0, 20)
    text_lens = [randint(0, text_len) for _ in range(batch)]
    heads, head_dim, two_d = randint(1, 3), (8, 24)[randint(0, 1)], randint(0, 3) == 0
    stream = randint(0, 1) == 1
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, text_lens)

    def view(shape):
        """NaN buffer with padding after every dim (so no dim is dense), or a contiguous tensor."""
        if randint(0, 2) == 0:
            return torch.full(shape, float("nan")), None
        buffer = torch.full([n + randint(0, 2) for n in shape], float("nan"))
        return buffer[tuple(slice(0, n) for n in shape)], buffer

    feat = (heads * head_dim,) if two_d else (heads, head_dim)
    latent = view((sum(latent_lens), *feat))[0]
    latent.copy_(torch.randn(latent.shape, generator=gen))
    padded = view((batch, text_len, *feat))[0]
    padded.copy_(torch.randn(padded.shape, generator=gen))
    if stream:
        pieces = [padded[b, :n] for b, n in enumerate(text_lens)]
        text = view((sum(text_lens), *feat))[0]
        if sum(text_lens):
            text.copy_(torch.cat(pieces))
        cu_text, text_rows = (cu_seqlens - cu_latent).contiguous(), sum(text_lens)
    else:
        text, cu_text, text_rows = padded, None, text_len
    with _registry.use_backend("torch"):
        want = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total, cu_text=cu_text)
        lat_want, txt_want = P.unpack_tokens(want, cu_latent, cu_seqlens, latent.shape[0], text_rows, cu_text=cu_text)
    out, out_buf = view(tuple(want.shape))
    lat_out, lat_buf = view(tuple(lat_want.shape))
    txt_out, txt_buf = view(tuple(txt_want.shape))
    with _registry.use_backend("cpp"):
        P.pack_tokens(latent, text, cu_latent, cu_seqlens, total, cu_text=cu_text, out=out)
        P.unpack_tokens(want, cu_latent, cu_seqlens, latent.shape[0], text_rows, cu_text=cu_text,
                        latent_out=lat_out, text_out=txt_out)
    assert torch.equal(out, want) and torch.equal(lat_out, lat_want) and torch.equal(txt_out, txt_want)
    for got, buf in ((out, out_buf), (lat_out, lat_buf), (txt_out, txt_buf)):
        if buf is not None:  # everything outside the view is still NaN
            assert int(buf.isnan().sum()) == buf.numel() - got.numel()
