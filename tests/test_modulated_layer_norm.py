"""Segment-modulated LayerNorm: every backend against the torch reference (fp32: pointwise table; fp16/bf16:
max error vs an fp64 reference ≤ 2 × that of diffusers' same-dtype arithmetic + floor), the reference against
diffusers' AdaLN modulation per sample, canary-padded inputs, poisoned outputs, opcheck, validation.

With DVG_TEST_GPU=1 on a CUDA machine the Triton kernel runs on CUDA in fp32, fp16 and bf16.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from _tolerances import assert_pointwise_close, assert_twice_torch_error
from dvg_engine.ops import _registry
from dvg_engine.ops import layer_norm as LN
from dvg_engine.ops.pack import packed_layout

from _backends import DEVICE, GPU, run_python, skip_unless_runs as _skip_unless_runs  # noqa: E402
if GPU:
    BACKEND_DTYPES = [("triton", torch.float32), ("triton", torch.float16), ("triton", torch.bfloat16)]
else:
    BACKEND_DTYPES = [("cpp", torch.float32), ("cpp", torch.float16), ("cpp", torch.bfloat16),
                      ("triton", torch.float32), ("triton", torch.float16)]

SEGMENTS = {"awkward": [1, 17, 0, 97, 129, 300], "single": [5]}


def make_inputs(lengths, dim, dtype, seed=0, offset=3.0):
    """x as a canary-padded view (row stride dim + 5, NaN around it); scale and shift as the non-contiguous
    chunks of one (B, 6·D) embedding, as diffusers' AdaLayerNormZero produces them. `offset` makes the row
    mean large against the spread, which punishes a one-pass E[x²] − E[x]² variance."""
    gen = torch.Generator().manual_seed(seed)
    cu_seqlens = packed_layout(lengths, [0] * len(lengths), DEVICE)[1]
    total, batch = sum(lengths), len(lengths)
    buffer = torch.full((total + 4, dim + 5), float("nan"), dtype=dtype, device=DEVICE)
    x = buffer[2:2 + total, :dim]
    x.copy_((torch.randn(total, dim, generator=gen) * 2.0 + offset).to(dtype))
    emb = (torch.randn(batch, 6 * dim, generator=gen) * 0.5).to(dtype).to(DEVICE)
    shift, scale = emb.chunk(6, dim=1)[:2]
    return x, cu_seqlens, scale, shift


def diffusers_style(x, cu_seqlens, scale, shift, eps=1e-6):
    """Per sample, the AdaLN-Zero modulation as diffusers writes it (LayerNorm in x's dtype, then the
    modulation in x's dtype), on each sample's rows separately."""
    outs = []
    bounds = cu_seqlens.tolist()
    norm = torch.nn.LayerNorm(x.shape[1], elementwise_affine=False, eps=eps)
    for b in range(len(bounds) - 1):
        rows = x[bounds[b]:bounds[b + 1]][None]
        outs.append((norm(rows) * (1 + scale[b:b + 1, None]) + shift[b:b + 1, None])[0])
    return torch.cat(outs)


def test_reference_matches_per_sample_diffusers_modulation():
    x, cu, scale, shift = make_inputs(SEGMENTS["awkward"], 96, torch.float32)
    expected = diffusers_style(x, cu, scale, shift)
    assert_pointwise_close(LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=True), expected)
    same_dtype = LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=False)
    if DEVICE.type == "cpu":  # the same ops on the same rows: bit-identical to diffusers' arithmetic
        assert torch.equal(same_dtype, expected)
    else:
        assert_pointwise_close(same_dtype, expected)


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("dim", [64, 200, 3072])
def test_matches_reference(backend, dtype, dim):
    _skip_unless_runs(backend)
    lengths = SEGMENTS["awkward"] if dim < 3072 else [1, 17, 0, 40]
    x, cu, scale, shift = make_inputs(lengths, dim, dtype)
    with _registry.use_backend(backend):
        got = LN.modulated_layer_norm(x, cu, scale, shift)
    assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous()
    assert not bool(torch.isnan(got).any()), "read a canary"
    if dtype == torch.float32:
        assert_pointwise_close(got, LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=True), name=backend)
    else:
        ref64 = LN.modulated_layer_norm_reference(x.double(), cu, scale.double(), shift.double(), upcast=False)
        same_dtype = LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=False)
        assert_twice_torch_error(got, same_dtype, ref64, name=backend)


@pytest.mark.skipif(not _registry.triton_importable(), reason="triton is not importable")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_poisoned_output_and_canaries(dtype):
    if DEVICE.type == "cpu" and not _registry.triton_interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    from dvg_engine.kernels import modulated_layer_norm as triton_ln
    x, cu, scale, shift = make_inputs(SEGMENTS["awkward"], 200, dtype)
    buffer = torch.full((x.shape[0] + 6, 211), float("nan"), dtype=dtype, device=DEVICE)
    out = buffer[3:3 + x.shape[0], :200]
    triton_ln.modulated_layer_norm(x, cu, scale, shift, 1e-6, out=out)
    assert_pointwise_close(out, LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=True))
    inside = torch.zeros(buffer.shape, dtype=torch.bool, device=DEVICE)
    inside[3:3 + x.shape[0], :200] = True
    assert bool(torch.isnan(buffer[~inside]).all()), "wrote outside the output view"


@pytest.mark.parametrize("backend", ["torch"] + sorted({b for b, _ in BACKEND_DTYPES}))
def test_opcheck(backend):
    if backend != "torch":
        _skip_unless_runs(backend)
    x, cu, scale, shift = make_inputs([3, 0, 5], 32, torch.float32)
    with _registry.use_backend(backend):
        torch.library.opcheck(torch.ops.dvg.modulated_layer_norm.default, (x, cu, scale, shift, 1e-6))


def test_backend_counts():
    x, cu, scale, shift = make_inputs([3, 4], 16, torch.float32)
    _registry.reset_call_counts()
    with _registry.use_backend("torch"):
        LN.modulated_layer_norm(x, cu, scale, shift)
    assert _registry.CALL_COUNTS == {("modulated_layer_norm", "torch"): 1}
    if DEVICE.type == "cpu" and _registry.cpp_available():
        _registry.reset_call_counts()
        with _registry.use_backend("auto"):
            LN.modulated_layer_norm(x, cu, scale, shift)
        assert _registry.CALL_COUNTS == {("modulated_layer_norm", "cpp"): 1}


@pytest.mark.parametrize("override,pattern", [
    (lambda a: dict(x=a["x"][:, :1].expand(-1, 16)), r"x=.*contiguous last dimension"),
    (lambda a: dict(x=a["x"][None]), r"x=.*a 2-D tensor"),
    (lambda a: dict(scale=a["scale"][:, :8]), r"scale=<tensor shape=\(2, 8\).*allowed: shape \(2, 16\)"),
    (lambda a: dict(shift=a["shift"].half()), r"shift=.*allowed: dtype torch.float32"),
    (lambda a: dict(cu_seqlens=torch.tensor([0, 3, 6], dtype=torch.int32, device=DEVICE)), r"cu_seqlens=\[0, 3, 6\] is invalid; allowed: a last entry equal to the token count 7"),
    (lambda a: dict(cu_seqlens=a["cu_seqlens"].long()), r"cu_seqlens=.*allowed: dtype torch.int32"),
    (lambda a: dict(cu_seqlens=torch.tensor([0, 7], dtype=torch.int32, device=DEVICE)), r"scale=.*allowed: shape \(1, 16\)"),
    (lambda a: dict(eps=0.0), r"eps=0.0 is invalid"),
    (lambda a: dict(x=a["x"].long()), r"x=.*dtype float32, float16 or bfloat16"),
])
def test_validation_errors(override, pattern):
    x, cu, scale, shift = make_inputs([3, 4], 16, torch.float32)
    args = dict(x=x, cu_seqlens=cu, scale=scale, shift=shift)
    args.update(override(args))
    with pytest.raises((ValueError, TypeError), match=pattern):
        LN.modulated_layer_norm(**args)


def test_compile_fullgraph():
    x, cu, scale, shift = make_inputs([3, 0, 5], 32, torch.float32)

    def block(x, cu, scale, shift):
        return F.gelu(LN.modulated_layer_norm(x, cu, scale, shift, validate=False))

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x, cu, scale, shift), block(x, cu, scale, shift))


def _fp16_conversion_cases():
    """fp16 rows of awkward widths (tails of the 8-wide conversion and the 32-lane sums), with subnormal, huge and
    infinite inputs and, through scale = −1, outputs equal to the shift: fp16 subnormals, ±0, the largest normal."""
    gen = torch.Generator().manual_seed(5)
    cases = []
    for dim in (1, 7, 8, 9, 31, 33, 200, 3077):
        lengths = [3, 0, 4]
        cu = packed_layout(lengths, [0] * len(lengths))[1]
        x = (torch.randn(sum(lengths), dim, generator=gen) * 3).half()
        x[0, : min(dim, 4)] = torch.tensor([6e-8, -3e-5, 65504.0, -0.0])[: min(dim, 4)].half()
        x[4, 0] = float("inf")
        scale = (torch.randn(3, dim, generator=gen) * 0.5).half()
        shift = (torch.randn(3, dim, generator=gen) * 0.5).half()
        scale[2] = -1.0
        shift[2] = torch.tensor([6e-8, -1e-7, 5e-6, 6.1e-5, 0.0, -0.0, 65504.0, 1.0])[torch.arange(dim) % 8].half()
        cases.append((x, cu, scale, shift))
    return cases


def test_cpp_fp16_portable_conversions_equal_f16c(tmp_path):
    """DVG_CPP_SIMD=0 makes the C++ LayerNorm convert fp16 with c10::Half (what a CPU without F16C runs); on this
    machine the default uses F16C instructions. Both must give the same bits, subnormals, infinities and NaN rows
    included."""
    _skip_unless_runs("cpp")
    if DEVICE.type != "cpu":
        pytest.skip("a CPU kernel test")
    cases = _fp16_conversion_cases()
    with _registry.use_backend("cpp"):
        got = [LN.modulated_layer_norm(*case) for case in cases]
    assert any(bool(torch.isnan(y).any()) for y in got) and any(
        bool(((y != 0) & (y.abs() < 6.1e-5)).any()) for y in got), "the cases must reach NaN and subnormal outputs"
    for y, (x, cu, scale, shift) in zip(got, cases):  # and agree with the reference to fp16 rounding
        ref = LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=True)
        assert torch.equal(torch.isnan(y), torch.isnan(ref))
        finite = ~torch.isnan(ref)
        assert_pointwise_close(y[finite], ref[finite], name="cpp fp16")
    torch.save({"cases": cases, "got": got}, tmp_path / "f16.pt")
    run_python(f"""
        import torch
        from dvg_engine.ops import _registry, layer_norm as LN
        saved = torch.load({str(tmp_path / 'f16.pt')!r})
        with _registry.use_backend("cpp"):
            for case, want in zip(saved["cases"], saved["got"]):
                y = LN.modulated_layer_norm(*case)
                assert torch.equal(y.view(torch.int16), want.view(torch.int16)), case[0].shape
        print("OK")
    """, DVG_CPP_SIMD="0")
