"""Varlen token packing: pack_tokens / unpack_tokens / pack_qk_rope against the torch reference (and the
reference against diffusers' RoPE), on every backend; canary-padded inputs, poisoned outputs, opcheck,
validation errors, backend forcing.

CPU: Triton under TRITON_INTERPRET=1 (fp32, fp16) and C++ (fp32, fp16, bf16). With DVG_TEST_GPU=1 on a
CUDA machine the same tests run the Triton kernels on CUDA in fp32, fp16 and bf16 (no diffusers needed
there: the diffusers comparisons skip, the kernels are checked against the torch reference, which is
checked against diffusers on CPU).
"""
from __future__ import annotations

import os

import pytest
import torch

from _tolerances import assert_pointwise_close, assert_verbose_allclose
from dvg_engine.ops import _registry
from dvg_engine.ops import pack as P

from _backends import DEVICE, GPU, run_python, skip_unless_runs as _skip_unless_runs  # noqa: E402

# (backend, dtype) pairs that run here; bf16 math is unsupported by the Triton interpreter.
if GPU:
    BACKEND_DTYPES = [("triton", torch.float32), ("triton", torch.float16), ("triton", torch.bfloat16)]
else:
    BACKEND_DTYPES = [("cpp", torch.float32), ("cpp", torch.float16), ("cpp", torch.bfloat16),
                      ("triton", torch.float32), ("triton", torch.float16)]

# Per-sample token grids (T, H, W) giving latent lengths 1, 17, 97, 129, 300, plus a text length per sample
# (one sample without text) and the padded text length.
CASES = {
    "awkward": ([(1, 1, 1), (1, 1, 17), (1, 1, 97), (3, 1, 43), (3, 10, 10)], [5, 0, 13, 1, 7], 13),
    "unequal": ([(2, 3, 5), (5, 2, 3)], [11, 3], 16),
    "single": ([(1, 1, 1)], [0], 4),
}


def canary_view(shape, dtype, pad_last: int = 3, pad_lead: int = 2, fill=None, seed: int = 0):
    """A view of `shape` inside a NaN-filled buffer padded before/after on dim 0 and after the last dim, so
    any out-of-bounds read shows up as NaN in the result and any out-of-bounds write changes a canary.
    Returns (view, buffer, inside) with `inside` a bool mask of the view's elements in the buffer."""
    big = list(shape)
    big[0] += 2 * pad_lead
    big[-1] += pad_last
    buffer = torch.full(big, float("nan"), dtype=dtype, device=DEVICE)
    index = (slice(pad_lead, pad_lead + shape[0]),) + tuple(slice(0, n) for n in shape[1:])
    view = buffer[index]
    if fill is None:
        gen = torch.Generator().manual_seed(seed)
        view.copy_(torch.randn(shape, generator=gen).to(dtype))
    else:
        view.fill_(fill)
    inside = torch.zeros(big, dtype=torch.bool, device=DEVICE)
    inside[index] = True
    return view, buffer, inside


def assert_canaries_intact(buffer, inside, name):
    outside = buffer[~inside]
    assert bool(torch.isnan(outside).all()), f"{name}: {int((~torch.isnan(outside)).sum())} canary elements were overwritten"


def make_inputs(case: str, heads: int, head_dim: int, dtype, seed: int = 0, canary: bool = True):
    grids, text_lens, text_len = CASES[case]
    latent_lens = [t * h * w for t, h, w in grids]
    cu_latent, cu_seqlens, total, max_seqlen = P.packed_layout(latent_lens, text_lens, DEVICE)
    batch = len(grids)
    if canary:
        latent = canary_view((sum(latent_lens), heads, head_dim), dtype, seed=seed)[0]
        text = canary_view((batch, text_len, heads, head_dim), dtype, seed=seed + 1)[0]
        # NaN in the padded text rows: a kernel that reads past a sample's valid text shows NaN in its output
        for b, n in enumerate(text_lens):
            text[b, n:] = float("nan")
    else:
        gen = torch.Generator().manual_seed(seed)
        latent = torch.randn(sum(latent_lens), heads, head_dim, generator=gen).to(dtype).to(DEVICE)
        text = torch.randn(batch, text_len, heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    grid_sizes = torch.tensor(grids, dtype=torch.int32, device=DEVICE)
    return dict(latent=latent, text=text, cu_latent=cu_latent, cu_seqlens=cu_seqlens, total=total,
                grid_sizes=grid_sizes, text_lens=text_lens, latent_lens=latent_lens, text_len=text_len,
                max_seqlen=max_seqlen)


def as_stream(d, text=None):
    """The padded text of `make_inputs` as a stream (total_text, heads, head_dim) + cu_text = cu_seqlens − cu_latent,
    the layout of an engine that keeps all samples' valid text tokens in one stream. Canary-padded as well."""
    text = d["text"] if text is None else text
    pieces = [text[b, :n] for b, n in enumerate(d["text_lens"])]
    rows = sum(d["text_lens"])
    stream = canary_view((rows, *text.shape[2:]), text.dtype, fill=0.0)[0]
    if rows:
        stream.copy_(torch.cat(pieces))
    cu_text = (d["cu_seqlens"] - d["cu_latent"]).contiguous()
    return stream, cu_text


def rope_axes_for(head_dim: int):
    return (16, 56, 56) if head_dim == 128 else (16, 24, 24)


# ----------------------------------------------------------------------------------------------------
# The reference itself
# ----------------------------------------------------------------------------------------------------

def test_packed_layout_host_values():
    cu_latent, cu_seqlens, total, max_seqlen = P.packed_layout([6, 0, 4], [2, 3, 0])
    assert cu_latent.tolist() == [0, 6, 6, 10] and cu_seqlens.tolist() == [0, 8, 11, 15]
    assert cu_latent.dtype == torch.int32 and (total, max_seqlen) == (15, 8)
    with pytest.raises(ValueError, match=r"text_lens=\[1, -1\]"):
        P.packed_layout([1, 2], [1, -1])
    with pytest.raises(ValueError, match="latent_lens has 2 entries and text_lens 1"):
        P.packed_layout([1, 2], [1])


def test_reference_layout_by_hand():
    """Segment b = [latent rows of b ; valid text prefix of b], written out explicitly."""
    d = make_inputs("awkward", 2, 8, torch.float32, canary=False)
    with _registry.use_backend("torch"):
        packed = P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"])
    pieces = []
    start = 0
    for b, (n_lat, n_txt) in enumerate(zip(d["latent_lens"], d["text_lens"])):
        pieces += [d["latent"][start:start + n_lat], d["text"][b, :n_txt]]
        start += n_lat
    assert torch.equal(packed, torch.cat(pieces))


def test_reference_rope_matches_diffusers():
    """Bit-exact with HunyuanVideoRotaryPosEmbed + apply_rotary_emb (the published HV code path), at grids up
    to 160 columns (angles up to 159 rad)."""
    pytest.importorskip("diffusers")
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    grids = [(2, 3, 160), (3, 5, 4), (1, 1, 1)]
    text_lens = [3, 0, 2]
    heads, head_dim, axes = 2, 128, (16, 56, 56)
    latent_lens = [t * h * w for t, h, w in grids]
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, text_lens)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(sum(latent_lens), heads, head_dim, generator=gen)
    k = torch.randn(sum(latent_lens), heads, head_dim, generator=gen)
    text = torch.randn(3, 3, heads, head_dim, generator=gen)
    with _registry.use_backend("torch"):
        q_packed, k_packed = P.pack_qk_rope(q, k, text, text, cu_latent, cu_seqlens,
                                            torch.tensor(grids, dtype=torch.int32), total, axes)
    rope = HunyuanVideoRotaryPosEmbed(patch_size=2, patch_size_t=1, rope_dim=list(axes), theta=256.0)
    start = 0
    for b, (t, h, w) in enumerate(grids):
        n = t * h * w
        freqs = rope(torch.zeros(1, 16, t, 2 * h, 2 * w))  # latent grid = 2× the patch grid
        for name, src, packed in (("q", q, q_packed), ("k", k, k_packed)):
            expected = apply_rotary_emb(src[start:start + n][None], freqs, sequence_dim=1)[0]
            seg = int(cu_seqlens[b])
            assert torch.equal(packed[seg:seg + n], expected), f"{name} sample {b}"
            assert torch.equal(packed[seg + n:seg + n + text_lens[b]], text[b, :text_lens[b]])
        start += n


def test_rope_inv_freq_matches_diffusers():
    pytest.importorskip("diffusers")
    from diffusers.models.embeddings import get_1d_rotary_pos_embed
    inv = P.rope_inv_freq((16, 56, 56), 256.0)
    expected = []
    for dim in (16, 56, 56):
        cos, _ = get_1d_rotary_pos_embed(dim, torch.ones(1), 256.0, use_real=True)  # pos 1: cos(inv_freq)
        expected.append(cos[0, ::2])
    assert torch.equal(inv.cos(), torch.cat(expected))
    assert P.rope_inv_freq((16, 56, 56), 256.0) is inv  # cached per model, not rebuilt per call
    with pytest.raises(ValueError, match=r"rope_axes_dim=\(16, 55, 57\)"):
        P.rope_inv_freq((16, 55, 57))


# ----------------------------------------------------------------------------------------------------
# Backends against the reference
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", ["awkward", "unequal"])
def test_pack_unpack_match_reference(backend, dtype, head_dim, case):
    _skip_unless_runs(backend)
    d = make_inputs(case, 2, head_dim, dtype)
    args = (d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"])
    with _registry.use_backend("torch"):
        expected = P.pack_tokens(*args)
    with _registry.use_backend(backend):
        packed = P.pack_tokens(*args)
        latent, text = P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], d["latent"].shape[0], d["text_len"])
    assert not bool(torch.isnan(packed).any()), "pack read a canary or a padded text row"
    assert torch.equal(packed, expected)  # a pure copy: bit-exact
    assert torch.equal(latent, d["latent"])
    for b, n in enumerate(d["text_lens"]):
        assert torch.equal(text[b, :n], d["text"][b, :n])
        assert bool((text[b, n:] == 0).all()), f"sample {b}: unpack must zero the text padding"


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_pack_qk_rope_matches_reference(backend, dtype, head_dim):
    _skip_unless_runs(backend)
    d = make_inputs("awkward", 2, head_dim, dtype)
    k_latent = canary_view(tuple(d["latent"].shape), dtype, seed=7)[0]
    k_text = canary_view(tuple(d["text"].shape), dtype, seed=8)[0]
    axes = rope_axes_for(head_dim)
    args = (d["latent"], k_latent, d["text"], k_text, d["cu_latent"], d["cu_seqlens"], d["grid_sizes"], d["total"], axes)
    with _registry.use_backend("torch"):
        q_ref, k_ref = P.pack_qk_rope(*args)
    with _registry.use_backend(backend):
        q, k = P.pack_qk_rope(*args)
    for name, got, ref in (("q", q, q_ref), ("k", k, k_ref)):
        assert not bool(torch.isnan(got).any()), f"{name}: read a canary or a padded text row"
        assert_pointwise_close(got, ref, name=f"{backend} {name}")
        # text tokens are copied, not rotated
        lat_mask = torch.zeros(d["total"], dtype=torch.bool, device=DEVICE)
        for b in range(len(d["latent_lens"])):
            s = int(d["cu_seqlens"][b])
            lat_mask[s:s + d["latent_lens"][b]] = True
        assert torch.equal(got[~lat_mask], ref[~lat_mask])


@pytest.mark.parametrize("backend,dtype", [bd for bd in BACKEND_DTYPES if bd[1] == torch.float32])
def test_rope_large_angles_match_reference(backend, dtype):
    """Columns up to 199: angles of ~200 rad, where an unreduced fast fp32 cos/sin would be off."""
    _skip_unless_runs(backend)
    grids, text_lens = [(1, 2, 200), (2, 1, 3)], [2, 0]
    latent_lens = [t * h * w for t, h, w in grids]
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, text_lens, DEVICE)
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(sum(latent_lens), 1, 128, generator=gen).to(DEVICE, dtype)
    text = torch.randn(2, 2, 1, 128, generator=gen).to(DEVICE, dtype)
    args = (q, q, text, text, cu_latent, cu_seqlens, torch.tensor(grids, dtype=torch.int32, device=DEVICE), total)
    with _registry.use_backend("torch"):
        ref, _ = P.pack_qk_rope(*args)
    with _registry.use_backend(backend):
        got, _ = P.pack_qk_rope(*args)
    # CPU (interpreter: numpy trig; C++: libm) is within a few ulp; CUDA's fp32 sin/cos after the in-kernel
    # range reduction is within the pointwise fp32 table.
    tol = 2e-6 if DEVICE.type == "cpu" else 1e-5
    assert_verbose_allclose(got, ref, atol=tol, rtol=tol, name=f"{backend} q")


@pytest.mark.parametrize("backend", sorted({b for b, _ in BACKEND_DTYPES}))
def test_features_2d_and_single_sample(backend):
    """(tokens, features) inputs (a hidden-state stream rather than heads) and B = 1."""
    _skip_unless_runs(backend)
    d = make_inputs("single", 1, 48, torch.float32)
    latent, text = d["latent"][:, 0], d["text"][:, :, 0]
    with _registry.use_backend(backend):
        packed = P.pack_tokens(latent, text, d["cu_latent"], d["cu_seqlens"], d["total"])
        lat_back, text_back = P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], latent.shape[0], d["text_len"])
    assert packed.shape == (1, 48) and torch.equal(packed, latent)
    assert torch.equal(lat_back, latent) and bool((text_back == 0).all())


@pytest.mark.parametrize("backend", sorted({b for b, _ in BACKEND_DTYPES}))
@pytest.mark.parametrize("latent_lens,text_lens,text_len", [
    ([0, 3], [2, 0], 2),        # a sample with text only
    ([2, 0, 0], [0, 0, 1], 1),  # empty samples between others
    ([0], [0], 3),              # nothing at all: total = 0
])
def test_degenerate_layouts(backend, latent_lens, text_lens, text_len):
    _skip_unless_runs(backend)
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, text_lens, DEVICE)
    gen = torch.Generator().manual_seed(5)
    latent = torch.randn(sum(latent_lens), 2, 8, generator=gen).to(DEVICE)
    text = torch.randn(len(latent_lens), text_len, 2, 8, generator=gen).to(DEVICE)
    results = {}
    for name in ("torch", backend):
        with _registry.use_backend(name):
            packed = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
            results[name] = (packed, *P.unpack_tokens(packed, cu_latent, cu_seqlens, latent.shape[0], text_len))
    assert results["torch"][0].shape == (total, 2, 8)
    for got, want in zip(results[backend], results["torch"]):
        assert torch.equal(got, want)


@pytest.mark.skipif(not _registry.triton_importable(), reason="triton is not importable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_poisoned_outputs_and_canaries(dtype):
    """Triton launchers writing into NaN-poisoned, canary-padded outputs: every output element is written,
    nothing outside it is."""
    if DEVICE.type == "cpu" and not _registry.triton_interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    from dvg_engine.kernels import pack as triton_pack
    d = make_inputs("awkward", 2, 64, dtype)
    total, heads, head_dim = d["total"], 2, 64
    with _registry.use_backend("torch"):
        ref = P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], total)
        q_ref, k_ref = P.pack_qk_rope(d["latent"], d["latent"], d["text"], d["text"], d["cu_latent"], d["cu_seqlens"],
                                      d["grid_sizes"], total, (16, 24, 24))
    out, out_buf, out_in = canary_view((total, heads, head_dim), dtype, fill=float("nan"))
    triton_pack.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], total, out=out)
    assert torch.equal(out, ref)
    assert_canaries_intact(out_buf, out_in, "pack out")

    q_out, q_buf, q_in = canary_view((total, heads, head_dim), dtype, fill=float("nan"))
    k_out, k_buf, k_in = canary_view((total, heads, head_dim), dtype, fill=float("nan"))
    triton_pack.pack_qk_rope(d["latent"], d["latent"], d["text"], d["text"], d["cu_latent"], d["cu_seqlens"],
                             d["grid_sizes"], P.rope_inv_freq((16, 24, 24), 256.0, DEVICE), [16, 24, 24], total,
                             q_out=q_out, k_out=k_out)
    assert_pointwise_close(q_out, q_ref, name="q")
    assert_pointwise_close(k_out, k_ref, name="k")
    assert_canaries_intact(q_buf, q_in, "q out")
    assert_canaries_intact(k_buf, k_in, "k out")

    lat_out, lat_buf, lat_in = canary_view(tuple(d["latent"].shape), dtype, fill=float("nan"))
    txt_out, txt_buf, txt_in = canary_view(tuple(d["text"].shape), dtype, fill=float("nan"))
    triton_pack.unpack_tokens(ref, d["cu_latent"], d["cu_seqlens"], d["latent"].shape[0], d["text_len"],
                              latent_out=lat_out, text_out=txt_out)
    assert torch.equal(lat_out, d["latent"])
    for b, n in enumerate(d["text_lens"]):
        assert torch.equal(txt_out[b, :n], d["text"][b, :n]) and bool((txt_out[b, n:] == 0).all())
    assert_canaries_intact(lat_buf, lat_in, "unpack latent out")
    assert_canaries_intact(txt_buf, txt_in, "unpack text out")


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float32)] + BACKEND_DTYPES)
@pytest.mark.parametrize("case", ["awkward", "unequal"])
def test_text_stream_layout(backend, dtype, case):
    """Text as one stream with cu_text gives the same packed stream as the padded text, and unpacks back to
    the stream."""
    if backend != "torch":
        _skip_unless_runs(backend)
    d = make_inputs(case, 2, 64, dtype)
    stream, cu_text = as_stream(d)
    k_stream, _ = as_stream(d, d["text"] * 0.5)
    axes = rope_axes_for(64)
    with _registry.use_backend("torch"):
        expected = P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"])
        q_ref, k_ref = P.pack_qk_rope(d["latent"], d["latent"], d["text"], d["text"] * 0.5, d["cu_latent"],
                                      d["cu_seqlens"], d["grid_sizes"], d["total"], axes)
    with _registry.use_backend(backend):
        packed = P.pack_tokens(d["latent"], stream, d["cu_latent"], d["cu_seqlens"], d["total"], cu_text=cu_text)
        latent, text_back = P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], d["latent"].shape[0],
                                            stream.shape[0], cu_text=cu_text)
        q, k = P.pack_qk_rope(d["latent"], d["latent"], stream, k_stream, d["cu_latent"], d["cu_seqlens"],
                              d["grid_sizes"], d["total"], axes, cu_text=cu_text)
    assert torch.equal(packed, expected)
    assert torch.equal(latent, d["latent"]) and torch.equal(text_back, stream)
    assert_pointwise_close(q, q_ref, name="q")
    assert_pointwise_close(k, k_ref, name="k")


def test_text_stream_validation():
    d = make_inputs("unequal", 2, 16, torch.float32, canary=False)
    stream, cu_text = as_stream(d)
    args = (d["latent"], stream, d["cu_latent"], d["cu_seqlens"], d["total"])
    with pytest.raises(ValueError, match=r"cu_seqlens=\[0, 41, 74\] is invalid; allowed: segments holding sample 0's "
                                         r"30 latent tokens \(cu_latent\) plus its 10 text tokens"):
        P.pack_tokens(*args, cu_text=torch.tensor([0, 10, 14], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r"cu_text=\[0, 11, 13\] is invalid; allowed: a last entry equal to the token count 14"):
        P.pack_tokens(*args, cu_text=torch.tensor([0, 11, 13], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r"text=<tensor shape=\(2, 16, 2, 16\).*allowed: a 3-D tensor"):
        P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"], cu_text=cu_text)
    with pytest.raises(ValueError, match=r"cu_text=.*allowed: dtype torch.int32"):
        P.unpack_tokens(d["latent"], d["cu_latent"], d["cu_seqlens"], 30, 14, cu_text=cu_text.long())


# ----------------------------------------------------------------------------------------------------
# opcheck, compile, backend choice
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch"] + sorted({b for b, _ in BACKEND_DTYPES}))
def test_opcheck(backend):
    if backend != "torch":
        _skip_unless_runs(backend)
    d = make_inputs("unequal", 2, 64, torch.float32, canary=False)
    axes = [16, 24, 24]
    inv = P.rope_inv_freq(axes, 256.0, DEVICE)
    with _registry.use_backend(backend):
        torch.library.opcheck(torch.ops.dvg.pack_tokens.default,
                              (d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"]))
        packed = P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"])
        torch.library.opcheck(torch.ops.dvg.unpack_tokens.default,
                              (packed, d["cu_latent"], d["cu_seqlens"], d["latent"].shape[0], d["text_len"]))
        torch.library.opcheck(torch.ops.dvg.pack_qk_rope.default,
                              (d["latent"], d["latent"], d["text"], d["text"], d["cu_latent"], d["cu_seqlens"],
                               d["grid_sizes"], inv, axes, d["total"]))
        stream, cu_text = as_stream(d)
        stream = stream.contiguous()
        torch.library.opcheck(torch.ops.dvg.pack_tokens.default,
                              (d["latent"], stream, d["cu_latent"], d["cu_seqlens"], d["total"], cu_text))
        torch.library.opcheck(torch.ops.dvg.unpack_tokens.default,
                              (packed, d["cu_latent"], d["cu_seqlens"], d["latent"].shape[0], stream.shape[0], cu_text))


def test_compile_fullgraph_pack_unpack():
    d = make_inputs("unequal", 2, 64, torch.float32, canary=False)
    total, total_latent, text_len = d["total"], d["latent"].shape[0], d["text_len"]

    def step(q, k, text, cu_latent, cu_seqlens, grid_sizes):
        q_packed, k_packed = P.pack_qk_rope(q, k, text, text, cu_latent, cu_seqlens, grid_sizes, total, (16, 24, 24),
                                            validate=False)
        return P.unpack_tokens(q_packed + k_packed, cu_latent, cu_seqlens, total_latent, text_len, validate=False)

    args = (d["latent"], d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["grid_sizes"])
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*args), step(*args)):
        assert torch.equal(got, want)


def test_compile_fullgraph_pack_attention_unpack():
    """The attention layer of a packed step, as the engine chains it: pack q/k with RoPE and v from the latent
    and text streams, varlen attention, unpack — one graph under torch.compile(fullgraph=True) that matches
    eager and a per-sample SDPA over [rotated latent ; text]."""
    from dvg_engine.ops.attention import varlen_attention
    d = make_inputs("unequal", 2, 64, torch.float32, canary=False)
    q_text, cu_text = as_stream(d)
    q_text = q_text.contiguous()
    k_text, v_text = q_text * 0.5, q_text * -0.25
    gen = torch.Generator().manual_seed(9)
    k_lat, v_lat = (torch.randn(d["latent"].shape, generator=gen).to(DEVICE) for _ in range(2))
    total, total_latent, total_text, max_seqlen = d["total"], d["latent"].shape[0], q_text.shape[0], d["max_seqlen"]
    axes = (16, 24, 24)

    def attention_layer(q_lat, k_lat, v_lat, q_txt, k_txt, v_txt, cu_latent, cu_seqlens, cu_text, grid_sizes):
        q, k = P.pack_qk_rope(q_lat, k_lat, q_txt, k_txt, cu_latent, cu_seqlens, grid_sizes, total, axes,
                              cu_text=cu_text, validate=False)
        v = P.pack_tokens(v_lat, v_txt, cu_latent, cu_seqlens, total, cu_text=cu_text, validate=False)
        out = varlen_attention(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, validate=False)
        return P.unpack_tokens(out, cu_latent, cu_seqlens, total_latent, total_text, cu_text=cu_text, validate=False)

    args = (d["latent"], k_lat, v_lat, q_text, k_text, v_text, d["cu_latent"], d["cu_seqlens"], cu_text,
            d["grid_sizes"])
    eager = attention_layer(*args)
    compiled = torch.compile(attention_layer, fullgraph=True, backend="aot_eager")(*args)
    for got, want in zip(compiled, eager):
        assert torch.equal(got, want)
    with _registry.use_backend("torch"):
        q_ref, k_ref = P.pack_qk_rope(d["latent"], k_lat, q_text, k_text, d["cu_latent"], d["cu_seqlens"],
                                      d["grid_sizes"], total, axes, cu_text=cu_text)
    v_ref = P.pack_tokens(v_lat, v_text, d["cu_latent"], d["cu_seqlens"], total, cu_text=cu_text)
    bounds = d["cu_seqlens"].tolist()
    expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        *(t[bounds[b]:bounds[b + 1]].transpose(0, 1) for t in (q_ref, k_ref, v_ref))).transpose(0, 1)
        for b in range(len(bounds) - 1)])
    lat_expected, txt_expected = P.unpack_tokens(expected, d["cu_latent"], d["cu_seqlens"], total_latent, total_text,
                                                 cu_text=cu_text)
    assert_verbose_allclose(eager[0], lat_expected, atol=1e-5, rtol=1e-5, name="latent out")
    assert_verbose_allclose(eager[1], txt_expected, atol=1e-5, rtol=1e-5, name="text out")


def test_backend_forcing_and_auto_choice(monkeypatch):
    d = make_inputs("single", 1, 16, torch.float32, canary=False)
    args = (d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"])
    _registry.reset_call_counts()
    with _registry.use_backend("torch"):
        P.pack_tokens(*args)
    assert _registry.CALL_COUNTS == {("pack_tokens", "torch"): 1}
    if DEVICE.type != "cpu":
        return
    if _registry.cpp_available():
        _registry.reset_call_counts()
        with _registry.use_backend("auto"):
            P.pack_tokens(*args)
        assert _registry.CALL_COUNTS == {("pack_tokens", "cpp"): 1}  # auto on CPU: C++, never the interpreter
    # An explicitly requested backend that cannot run raises instead of falling back.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with _registry.use_backend("triton"), pytest.raises(RuntimeError, match="backend 'triton' was requested"):
        P.pack_tokens(*args)
    monkeypatch.setenv("DVG_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="backend 'triton' was requested"):
        P.pack_tokens(*args)


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------

def _pack_args(**overrides):
    d = make_inputs("unequal", 2, 16, torch.float32, canary=False)
    args = dict(latent=d["latent"], text=d["text"], cu_latent=d["cu_latent"], cu_seqlens=d["cu_seqlens"],
                total=d["total"])
    args.update(overrides)
    return args, d


@pytest.mark.parametrize("override,pattern", [
    (lambda d: dict(cu_seqlens=d["cu_seqlens"].long()), r"cu_seqlens=<tensor .*dtype=torch.int64.*allowed: dtype torch.int32"),
    (lambda d: dict(cu_seqlens=d["cu_seqlens"].flip(0).contiguous()), r"cu_seqlens=\[\d+, .*allowed: prefix sums starting at 0"),
    (lambda d: dict(cu_seqlens=torch.tensor([0, 60, 42], dtype=torch.int32, device=DEVICE)), r"allowed: non-decreasing prefix sums"),
    (lambda d: dict(total=d["total"] + 1), r"cu_seqlens=\[0, 41, 74\] is invalid; allowed: a last entry equal to the token count 75"),
    (lambda d: dict(cu_seqlens=torch.tensor([0, 52, 74], dtype=torch.int32, device=DEVICE)), r"sample 0 would get 22"),
    (lambda d: dict(cu_latent=d["cu_latent"][:2].contiguous()), r"cu_latent=.*allowed: shape \(3,\)"),
    (lambda d: dict(cu_seqlens=torch.tensor([[0, 41, 74]], dtype=torch.int32, device=DEVICE)), r"cu_seqlens=.*1-D tensor"),
    (lambda d: dict(cu_seqlens=torch.tensor([0, 9, 41, 9, 74, 9], dtype=torch.int32, device=DEVICE)[::2]), r"cu_seqlens=.*a contiguous tensor"),
    (lambda d: dict(text=d["text"].half()), r"text=.*dtype=torch.float16.*allowed: dtype torch.float32"),
    (lambda d: dict(text=d["text"][..., :8]), r"text=.*allowed: per-token shape \(2, 16\)"),
    (lambda d: dict(latent=d["latent"].transpose(1, 2).contiguous().transpose(1, 2)), r"latent=.*contiguous last dimension"),
    (lambda d: dict(latent=d["latent"].long()), r"latent=.*dtype float32, float16 or bfloat16"),
    (lambda d: dict(total=-1), r"total=-1 is invalid"),
    (lambda d: dict(latent=d["latent"].to("meta"), text=d["text"].to("meta")), r"cu_latent=.*allowed: a tensor on meta"),
])
def test_pack_validation_errors(override, pattern):
    args, d = _pack_args()
    args.update(override(d))
    with pytest.raises((ValueError, TypeError), match=pattern):
        P.pack_tokens(**args)


def test_unpack_and_rope_validation_errors():
    d = make_inputs("unequal", 2, 64, torch.float32, canary=False)
    with _registry.use_backend("torch"):
        packed = P.pack_tokens(d["latent"], d["text"], d["cu_latent"], d["cu_seqlens"], d["total"])
    with pytest.raises(ValueError, match=r"cu_latent=\[0, 30, 60\] is invalid; allowed: a last entry equal to the token count 59"):
        P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], 59, d["text_len"])
    with pytest.raises(ValueError, match=r"sample 0 would get 11"):
        P.unpack_tokens(packed, d["cu_latent"], d["cu_seqlens"], 60, 10)
    rope_args = dict(q_latent=d["latent"], k_latent=d["latent"], q_text=d["text"], k_text=d["text"],
                     cu_latent=d["cu_latent"], cu_seqlens=d["cu_seqlens"], grid_sizes=d["grid_sizes"], total=d["total"])
    with pytest.raises(ValueError, match=r"rope_axes_dim=\[16, 56, 56\] is invalid; allowed: three even ints summing to head_dim=64"):
        P.pack_qk_rope(**rope_args, rope_axes_dim=(16, 56, 56))
    bad_grid = torch.tensor([[2, 3, 5], [5, 2, 2]], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"grid_sizes=\[\[2, 3, 5\], \[5, 2, 2\]\].*sample 1 has 30 latent tokens"):
        P.pack_qk_rope(**{**rope_args, "grid_sizes": bad_grid}, rope_axes_dim=(16, 24, 24))
    with pytest.raises(ValueError, match=r"grid_sizes=.*int32 tensor of shape \(2, 3\)"):
        P.pack_qk_rope(**{**rope_args, "grid_sizes": d["grid_sizes"].long()}, rope_axes_dim=(16, 24, 24))
    with pytest.raises(ValueError, match=r"k_latent=.*allowed: the shape of q_latent"):
        P.pack_qk_rope(**{**rope_args, "k_latent": d["latent"][:-1]}, rope_axes_dim=(16, 24, 24))
    # validate=False skips only the content checks (no device sync); the metadata checks remain.
    with pytest.raises(ValueError, match="dtype torch.int32"):
        P.pack_tokens(d["latent"], d["text"], d["cu_latent"].long(), d["cu_seqlens"], d["total"], validate=False)


def test_imports_and_runs_without_triton(tmp_path):
    """With triton unimportable (macOS, Windows) the ops import, and auto picks C++ / torch on CPU."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from dvg_engine.ops import pack as P, layer_norm as LN, _registry\n"
        "assert not _registry.triton_importable()\n"
        "cu_lat, cu_seq, total, _ = P.packed_layout([6, 4], [2, 0])\n"
        "lat = torch.randn(10, 2, 8); txt = torch.randn(2, 3, 2, 8)\n"
        "packed = P.pack_tokens(lat, txt, cu_lat, cu_seq, total)\n"
        "assert torch.equal(P.unpack_tokens(packed, cu_lat, cu_seq, 10, 3)[0], lat)\n"
        "grid = torch.tensor([[1, 2, 3], [1, 2, 2]], dtype=torch.int32)\n"
        "P.pack_qk_rope(lat, lat, txt, txt, cu_lat, cu_seq, grid, total, (2, 2, 4))\n"
        "LN.modulated_layer_norm(packed.flatten(1), cu_seq, torch.zeros(2, 16), torch.zeros(2, 16))\n"
        "try:\n"
        "    with _registry.use_backend('triton'):\n"
        "        P.pack_tokens(lat, txt, cu_lat, cu_seq, total)\n"
        "except RuntimeError as exc:\n"
        "    assert 'triton is not installed' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('forcing triton without triton must raise')\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_cpp_fp16_rope_portable_conversions_equal_f16c(tmp_path):
    """The C++ RoPE pack converts fp16 heads with F16C where the CPU has it; DVG_CPP_SIMD=0 forces c10::Half (what a
    CPU without F16C runs). Same bits either way, subnormal and largest-normal values included."""
    _skip_unless_runs("cpp")
    if DEVICE.type != "cpu":
        pytest.skip("a CPU kernel test")
    cases = []
    for head_dim in (64, 128):
        d = make_inputs("awkward", 2, head_dim, torch.float16, canary=False)
        latent = d["latent"].clone()
        latent[0, 0, :6] = torch.tensor([6e-8, -3e-5, 65504.0, -65504.0, 0.0, -0.0]).half()
        cases.append((latent, latent.flip(0).contiguous(), d["text"], d["text"], d["cu_latent"], d["cu_seqlens"],
                      d["grid_sizes"], d["total"], rope_axes_for(head_dim)))
    with _registry.use_backend("cpp"):
        got = [P.pack_qk_rope(*case) for case in cases]
    for (q, k), case in zip(got, cases):
        with _registry.use_backend("torch"):
            q_ref, _ = P.pack_qk_rope(*case)
        assert_pointwise_close(q, q_ref, name="cpp fp16 q")
    torch.save({"cases": cases, "got": got}, tmp_path / "rope16.pt")
    run_python(f"""
        import torch
        from dvg_engine.ops import _registry, pack as P
        saved = torch.load({str(tmp_path / 'rope16.pt')!r})
        with _registry.use_backend("cpp"):
            for case, (q_want, k_want) in zip(saved["cases"], saved["got"]):
                q, k = P.pack_qk_rope(*case)
                assert torch.equal(q.view(torch.int16), q_want.view(torch.int16)), case[0].shape
                assert torch.equal(k.view(torch.int16), k_want.view(torch.int16)), case[0].shape
        print("OK")
    """, DVG_CPP_SIMD="0")
