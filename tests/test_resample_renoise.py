"""dvg::resample_renoise / dvg::resample_renoise_packed: Triton (interpreter on CPU) and C++ against the
torch reference (the functions of dvg_engine.sampling), the parity vectors, token layout, canaries,
validation, opcheck and torch.compile.

On CPU both kernels are expected to be bit-identical to the reference (same rounding per operation);
the documented contract — and what is asserted on CUDA — is the pointwise table of _tolerances.
"""
import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
try:  # the offline GPU host may lack hypothesis: only the property tests need it
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    HAVE_HYPOTHESIS = True
except ImportError:
    HAVE_HYPOTHESIS = False

from _tolerances import assert_pointwise_close, assert_verbose_allclose
from dvg_engine import planner, sampling
from dvg_engine.ops import _registry
from dvg_engine.ops import resample as R

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CPU = DEVICE.type == "cpu"


def _cpp_kernel_built() -> bool:
    _registry.cpp_extension()
    return hasattr(torch.ops.dvg, "_cpp_resample_renoise")


def _triton_usable() -> bool:
    return _registry.triton_importable() and (DEVICE.type == "cuda" or _registry.triton_interpreting())


requires_cpp = pytest.mark.skipif(not _cpp_kernel_built(),
                                  reason="dvg_engine._C lacks the resample_renoise kernel (not built, or built "
                                         "before csrc/resample_renoise.cpp): rebuild with setup.py build_ext")
requires_triton = pytest.mark.skipif(not _triton_usable(), reason="triton unavailable (or CPU without TRITON_INTERPRET=1)")

KERNEL_BACKENDS = [pytest.param("triton", marks=requires_triton), pytest.param("cpp", marks=requires_cpp)]
ALL_BACKENDS = [pytest.param("torch")] + KERNEL_BACKENDS


def _device_for(backend: str) -> torch.device:
    return torch.device("cpu") if backend in ("cpp", "torch") else DEVICE


def _lerp_is_fused() -> bool:
    """torch.lerp's CPU kernel rounds once (a fused multiply-add) where the CPU has FMA; the kernels
    copy that, so bit equality with the reference is expected exactly then. The fused result is
    emulated in float64 (the product of two floats is exact there)."""
    gen = torch.Generator().manual_seed(0)
    a, b, w = torch.randn(256, generator=gen), torch.randn(256, generator=gen), torch.rand(256, generator=gen)
    small = w < 0.5
    coeff = torch.where(small, w, w - 1).double()
    fused = (coeff * (b - a).double() + torch.where(small, a, b).double()).float()
    return torch.equal(torch.lerp(a, b, w), fused)


BITWISE_ON_CPU = _lerp_is_fused()


@functools.lru_cache(maxsize=None)
def _interpreter_fma_rounds_once() -> bool:
    """Whether the Triton interpreter's `tl.fma` rounds once, as the GPU's does. Older interpreters
    (triton 3.6, the GPU host's version) compute `x * y + z` in two roundings, which moves the kernel's
    lerp by one ulp on a few elements: on those the Triton-on-CPU check is the pointwise table, not bit
    equality. Probed on values where one and two roundings differ."""
    import triton
    import triton.language as tl

    @triton.jit
    def _fma_probe(X, Y, Z, Out, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(Out + offs, tl.fma(tl.load(X + offs), tl.load(Y + offs), tl.load(Z + offs)))

    gen = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(256, generator=gen) for _ in range(3))
    once = (x.double() * y.double() + z.double()).float()
    twice = x * y + z
    assert not torch.equal(once, twice), "probe values must tell one rounding from two"
    out = torch.empty(256)
    _fma_probe[(1,)](x, y, z, out, N=256)
    return torch.equal(out, once)


@requires_triton
def test_interpreter_fma_probe_keeps_bit_equality_on_the_ci_triton():
    """The probe must not quietly turn CI's bit-equality checks into tolerance checks: the interpreter of
    triton >= 3.9 (CI's) rounds its fma once."""
    import triton
    if DEVICE.type != "cpu":
        pytest.skip("the probe concerns the interpreter")
    if tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 9):
        pytest.skip(f"triton {triton.__version__}: older interpreters may round their fma twice (3.6 does)")
    assert _interpreter_fma_rounds_once()


def _assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, name: str,
                              backend: str = "") -> None:
    """Bit equality on CPU (where torch's lerp is fused), else the pointwise table. `backend` "triton" on
    CPU means the interpreter: bitwise only where its fma rounds once."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, \
        f"{name}: {actual.dtype}{tuple(actual.shape)} vs reference {expected.dtype}{tuple(expected.shape)}"
    assert actual.device == expected.device, f"{name}: compare on one device ({actual.device} vs {expected.device})"
    bitwise = BITWISE_ON_CPU and (backend != "triton" or _interpreter_fma_rounds_once())
    if actual.device.type == "cpu" and bitwise:
        diff = actual.double() - expected.double()
        assert torch.equal(actual, expected), (
            f"{name}: not bit-identical to the reference: {int((actual != expected).sum())} of {actual.numel()} "
            f"differ, max abs {float(diff.abs().max()):.3g}")
    else:
        assert_pointwise_close(actual.cpu(), expected.cpu(), name=name)


def _call(backend, *args, **kwargs):
    with _registry.use_backend(backend):
        return R.resample_renoise(*args, **kwargs)


# Stage-axis chains (src axes, dst axes) covering: anisotropic upsampling with non-integer ratios,
# a single source frame (broadcast), unchanged H/W, unchanged T, odd sizes, identity.
CHAINS = {
    "hv_like_0to1": ([[0, 3, 5, 8], [0, 3, 4, 7, 8, 11, 12, 15], [0, 3, 4, 7, 8, 11, 12, 15, 16, 19, 20, 23]],
                     [[0, 3, 5, 8], [0, 1, 3, 4, 5, 7, 8, 10, 11, 12, 14, 15],
                      [0, 1, 3, 4, 5, 7, 8, 9, 11, 12, 14, 15, 16, 18, 19, 20, 22, 23]]),
    "temporal_and_spatial": ([[0, 4, 8], [0, 2, 5, 6], [0, 3, 6, 9, 10]],
                             [list(range(9)), list(range(7)), list(range(11))]),
    "single_frame": ([[0], [0, 4, 8], [0]], [[0, 3, 6], list(range(9)), [0, 5, 8]]),
    "same_hw": ([[0, 5], [0, 1, 2, 3, 4], [0, 1, 2]], [[0, 2, 3, 5], [0, 1, 2, 3, 4], [0, 1, 2]]),
    "identity": ([[0, 1], [0, 1, 2], [0, 1, 2, 3]], [[0, 1], [0, 1, 2], [0, 1, 2, 3]]),
}


def _inputs(chain: str, batch: int = 2, channels: int = 3, dtype=torch.float32, device=DEVICE, seed=0):
    src, dst = CHAINS[chain]
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, channels, *(len(a) for a in src), generator=gen).to(device=device, dtype=dtype)
    tensors = R.transition_tensors(src, dst, device)
    seeds = torch.tensor([12345, -3, 2 ** 40 + 7][:batch], dtype=torch.int64, device=device)
    return x0, tensors, seeds


# ---------------------------------------------------------------------------------------------------
# kernels vs the torch reference
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("smoothing", [0, 1, 2])
def test_kernel_matches_reference_fp32(backend, chain, smoothing):
    device = _device_for(backend)
    x0, tensors, seeds = _inputs(chain, device=device)
    expected = R.resample_renoise_ref(x0, **tensors, seeds=seeds, sigma=0.9473683834075928, smoothing=smoothing)
    actual = _call(backend, x0, **tensors, seeds=seeds, sigma=0.9473683834075928, smoothing=smoothing)
    _assert_matches_reference(actual, expected, f"{backend}/{chain}/smoothing={smoothing}", backend)


if HAVE_HYPOTHESIS:
    @st.composite
    def _random_transition(draw):
        """A random transition between two nested stages (planner.nested_axes), any sizes ≥ 1."""
        full = [draw(st.integers(1, 7)), draw(st.integers(1, 11)), draw(st.integers(1, 11))]
        dst = [draw(st.integers(1, f)) for f in full]
        src = [draw(st.integers(1, d)) for d in dst]
        axes = [planner.nested_axes(f, [s_, d, f]) for f, s_, d in zip(full, src, dst)]
        src_axes, dst_axes = [a[0] for a in axes], [a[1] for a in axes]
        batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 3))
        seeds = draw(st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), min_size=batch, max_size=batch))
        sigma = draw(st.floats(0.0, 1.0))
        smoothing = draw(st.sampled_from([0, 1, 2]))
        return src_axes, dst_axes, batch, channels, seeds, sigma, smoothing


    def _check_random_transition(backend, case):
        src_axes, dst_axes, batch, channels, seeds, sigma, smoothing = case
        device = _device_for(backend)
        gen = torch.Generator().manual_seed(len(seeds) + channels)
        x0 = torch.randn(batch, channels, *(len(a) for a in src_axes), generator=gen).to(device)
        tensors = R.transition_tensors(src_axes, dst_axes, device)
        seeds_t = torch.tensor(seeds, dtype=torch.int64, device=device)
        expected = R.resample_renoise_ref(x0, **tensors, seeds=seeds_t, sigma=sigma, smoothing=smoothing)
        actual = _call(backend, x0, **tensors, seeds=seeds_t, sigma=sigma, smoothing=smoothing)
        _assert_matches_reference(actual, expected, f"{backend} {src_axes} -> {dst_axes}", backend)


    @requires_cpp
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=_random_transition())
    def test_cpp_random_transitions(case):
        _check_random_transition("cpp", case)


    @requires_triton
    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=_random_transition())
    def test_triton_random_transitions(case):
        _check_random_transition("triton", case)
else:
    def test_random_transitions_need_hypothesis():
        pytest.skip("hypothesis is not installed: the random-transition property tests did not run")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("seeds", [[12345, 12345, 12345], [7, 7, -7], [1, 2, 1]])
def test_shared_and_mixed_seeds(backend, seeds):
    """Samples with equal seeds get the same field (the C++ kernel computes it once per run of equal
    seeds); a seed change in between must not leak the previous field."""
    device = _device_for(backend)
    x0, tensors, _ = _inputs("hv_like_0to1", batch=3, device=device)
    seeds_t = torch.tensor(seeds, device=device)
    expected = R.resample_renoise_ref(x0, **tensors, seeds=seeds_t, sigma=0.8, smoothing=1)
    actual = _call(backend, x0, **tensors, seeds=seeds_t, sigma=0.8, smoothing=1)
    _assert_matches_reference(actual, expected, f"{backend} seeds {seeds}", backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("in_dtype,out_dtype", [(torch.float32, torch.float16), (torch.float16, torch.float16),
                                                (torch.float64, torch.float32), (torch.float32, torch.bfloat16)])
def test_kernel_dtypes(backend, in_dtype, out_dtype):
    if backend == "triton" and ON_CPU and torch.bfloat16 in (in_dtype, out_dtype):
        pytest.skip("the Triton interpreter has no bfloat16 arithmetic; bf16 runs on a GPU")
    device = _device_for(backend)
    x0, tensors, seeds = _inputs("hv_like_0to1", dtype=in_dtype, device=device)
    expected = R.resample_renoise_ref(x0, **tensors, seeds=seeds, sigma=0.5, smoothing=1, out_dtype=out_dtype)
    actual = _call(backend, x0, **tensors, seeds=seeds, sigma=0.5, smoothing=1, out_dtype=out_dtype)
    _assert_matches_reference(actual, expected, f"{backend} {in_dtype}->{out_dtype}", backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_noise_is_bitwise_the_reference_field(backend):
    """σ = 1 makes the output the noise itself (0·x + ε·1): it must equal sampling.coordinate_noise's
    float32 field bit for bit on CPU (C++: glibc log/cos; interpreter: numpy). On CUDA libdevice's fp64
    log/cos may move a value by one float32 ulp."""
    device = _device_for(backend)
    axes = [[0, 7, 30], list(range(0, 90, 7)), list(range(3, 160, 9))]
    seeds = [12345, 0, -1, 2 ** 40 + 7]
    x0 = torch.zeros(len(seeds), 5, *(len(a) for a in axes), device=device)
    tensors = R.transition_tensors(axes, axes, device)
    out = _call(backend, x0, **tensors, seeds=torch.tensor(seeds, device=device), sigma=1.0)
    for b, seed in enumerate(seeds):
        field = sampling.coordinate_noise(*axes, 5, seed)[0]
        got = out[b].cpu()
        if device.type == "cpu":
            assert torch.equal(got, field), f"seed {seed}: {int((got != field).sum())} noise values differ"
        else:
            ulp = torch.finfo(torch.float32).eps * field.abs().clamp(min=1e-3)
            assert bool(((got - field).abs() <= ulp).all()), f"seed {seed}: noise differs by more than 1 ulp"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("patch", [(1, 2, 2), (1, 1, 1), (2, 1, 3)])
def test_token_layout_matches_permuted_reference(backend, patch):
    device = _device_for(backend)
    src = [[0, 3], [0, 2, 5], [0, 4, 5]]
    dst = [[0, 1, 2, 3], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 2, 3, 3, generator=gen).to(device)
    tensors = R.transition_tensors(src, dst, device)
    seeds = torch.tensor([12345, 7], device=device)
    bcthw = _call(backend, x0, **tensors, seeds=seeds, sigma=0.3, smoothing=1)
    tokens = _call(backend, x0, **tensors, seeds=seeds, sigma=0.3, smoothing=1, layout="tokens", patch=patch)
    pt, ph, pw = patch
    assert tokens.shape == (2, (4 // pt) * (6 // ph) * (6 // pw), 4 * pt * ph * pw)
    assert tokens.is_contiguous()
    assert torch.equal(tokens, R.tokens_from_bcthw(bcthw, patch))


@requires_triton
@pytest.mark.parametrize("layout", ["bcthw", "tokens"])
@pytest.mark.parametrize("block_r,block_w", [(32, 16), (16, 8)])
def test_triton_tile_shapes(layout, block_r, block_w):
    """GPU-sized and tiny tiles forced under the interpreter (which otherwise uses one large tile):
    partial tiles on both axes, halo across tile borders."""
    from dvg_engine.kernels import resample_renoise as kernel
    x0, tensors, seeds = _inputs("hv_like_0to1", batch=1, channels=2, device=DEVICE)
    patch = (1, 2, 2) if layout == "tokens" else (1, 1, 1)
    expected = R.resample_renoise_ref(x0, **tensors, seeds=seeds, sigma=0.6, smoothing=1, layout=layout, patch=patch)
    out = torch.full_like(expected, float("nan"))
    kernel.resample_renoise(x0, *[tensors[k] for k in ("anchor_t", "anchor_h", "anchor_w", "coord_t", "coord_h",
                                                       "coord_w")],
                            seeds, 0.6, 1, out, layout, patch, block_r=block_r, block_w=block_w)
    _assert_matches_reference(out, expected, f"tile {block_r}x{block_w} {layout}", "triton")


def test_token_layout_feeds_the_patch_embedding_matmul():
    """tokens @ W.flatten(1).T + b equals diffusers' HunyuanVideoPatchEmbed (a Conv3d) on the bcthw output."""
    diffusers_hv = pytest.importorskip("diffusers.models.transformers.transformer_hunyuan_video")
    torch.manual_seed(0)
    embed = diffusers_hv.HunyuanVideoPatchEmbed(patch_size=(1, 2, 2), in_chans=4, embed_dim=8).double()
    x0, tensors, seeds = _inputs("hv_like_0to1", channels=4, device=torch.device("cpu"), dtype=torch.float64)
    bcthw = R.resample_renoise(x0, **tensors, seeds=seeds, sigma=0.4)
    tokens = R.resample_renoise(x0, **tensors, seeds=seeds, sigma=0.4, layout="tokens", patch=(1, 2, 2))
    weight = embed.proj.weight.flatten(1)
    assert_verbose_allclose(tokens @ weight.T + embed.proj.bias, embed(bcthw), atol=1e-10, name="patch embed")


# ---------------------------------------------------------------------------------------------------
# parity vectors (counts come from the files)
# ---------------------------------------------------------------------------------------------------

def _load_parity(parity_path, name):
    with open(parity_path / f"{name}.json") as fh:
        cases = json.load(fh)
    arrays = np.load(parity_path / f"{name}.npz")
    return cases, arrays


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_parity_resize_and_smoothing(backend, parity_path):
    """σ = 0 turns the op into the resize (+ the 0→1 smoothing): every resize.json case, abs 2e-6."""
    device = _device_for(backend)
    cases, arrays = _load_parity(parity_path, "resize")
    assert cases, "resize.json is empty"
    checked = 0
    for case in cases:
        x0 = torch.from_numpy(arrays[f"{case['key']}_input"]).to(device)
        anchors = {f"anchor_{d}": torch.tensor(case["anchors"][d], dtype=torch.int32, device=device) for d in "thw"}
        target_axes = case["stage_axes"][case["to_stage"]]
        coords = {f"coord_{d}": torch.tensor(a, dtype=torch.int64, device=device) for d, a in zip("thw", target_axes)}
        seeds = torch.full((x0.shape[0],), 12345, dtype=torch.int64, device=device)
        variants = [(0, "output")] + ([(1, "output_smoothed")] if case["has_smoothed"] else [])
        for smoothing, suffix in variants:
            out = _call(backend, x0, **anchors, **coords, seeds=seeds, sigma=0.0, smoothing=smoothing)
            assert list(out.shape) == case["output_shape"]
            expected = torch.from_numpy(arrays[f"{case['key']}_{suffix}"])
            assert_verbose_allclose(out.cpu(), expected, atol=2e-6, name=f"{case['key']} {suffix}")
            checked += 1
    assert checked == len(cases) + sum(bool(c["has_smoothed"]) for c in cases)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_parity_transitions(backend, parity_path):
    """Every transition.json case end to end: x̂0 = x − σ·v, then the op; abs 2e-5."""
    device = _device_for(backend)
    cases, arrays = _load_parity(parity_path, "transition")
    assert cases, "transition.json is empty"
    for case in cases:
        key = case["key"]
        latents = torch.from_numpy(arrays[f"{key}_latents"])
        velocity = torch.from_numpy(arrays[f"{key}_velocity"])
        x0 = sampling.x0_from_velocity(latents, velocity, case["x0_sigma"]).to(device)
        src, dst = case["stage_axes"][case["from_stage"]], case["stage_axes"][case["to_stage"]]
        tensors = R.transition_tensors(src, dst, device)
        seeds = torch.full((x0.shape[0],), case["noise_seed"], dtype=torch.int64, device=device)
        out = _call(backend, x0, **tensors, seeds=seeds, sigma=case["renoise_sigma"],
                    smoothing=1 if case["to_stage"] == 1 else 0)
        expected = torch.from_numpy(arrays[f"{key}_new_latents"])
        assert_verbose_allclose(out.cpu(), expected, atol=2e-5, name=key)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_parity_noise(backend, parity_path):
    """Every noise.json field (σ = 1, source grid = target grid): exact after the float32 cast."""
    device = _device_for(backend)
    with open(parity_path / "noise.json") as fh:
        spec = json.load(fh)
    arrays = np.load(parity_path / "noise.npz")
    cases = list(spec["cases"])
    assert cases, "noise.json has no cases"
    for case in cases:
        axes = [case["axis_t"], case["axis_h"], case["axis_w"]]
        x0 = torch.zeros(case["shape"], device=device)
        tensors = R.transition_tensors(axes, axes, device)
        out = _call(backend, x0, **tensors, seeds=torch.tensor([case["seed"]], device=device), sigma=1.0)
        expected = torch.from_numpy(arrays[f"{case['key']}_noise_f32"])
        if device.type == "cpu":
            assert torch.equal(out.cpu(), expected), f"{case['key']}: noise differs from the parity field"
        else:
            assert_verbose_allclose(out.cpu(), expected, atol=4e-7, rtol=1.2e-7, name=case["key"])
    batch = spec["batch_case"]
    axes = [batch["axis_t"], batch["axis_h"], batch["axis_w"]]
    x0 = torch.zeros(batch["batch_size"], batch["channels"], *(len(a) for a in axes), device=device)
    seeds = torch.full((batch["batch_size"],), batch["seed"], dtype=torch.int64, device=device)
    out = _call(backend, x0, **R.transition_tensors(axes, axes, device), seeds=seeds, sigma=1.0)
    assert_verbose_allclose(out.cpu(), torch.from_numpy(arrays[batch["key"]]), atol=0.0 if ON_CPU else 4e-7,
                            name=batch["key"])


# ---------------------------------------------------------------------------------------------------
# memory safety: canary-padded inputs, poisoned outputs
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["bcthw", "tokens"])
def test_canary_inputs_and_poisoned_output(backend, layout):
    device = _device_for(backend)
    src, dst = CHAINS["temporal_and_spatial"]
    b, c = 2, 3
    shape = (b, c, *(len(a) for a in src))
    # x0: a strided view inside a NaN buffer (every element the kernel must not read is NaN)
    big = torch.full((b + 1, c + 2, shape[2] + 2, shape[3] + 3, 2 * shape[4] + 2), float("nan"), device=device)
    view = big[1:, 1:1 + c, 1:-1, 2:-1, 1:-1:2]
    gen = torch.Generator().manual_seed(3)
    view.copy_(torch.randn(shape, generator=gen))
    assert not view.is_contiguous()
    # index tensors: slices of buffers whose outside entries would index far out of range
    tensors = {}
    for name, value in R.transition_tensors(src, dst, device).items():
        padded = torch.full((value.numel() + 2,), 10 ** 6, dtype=value.dtype, device=device)
        padded[1:-1] = value
        tensors[name] = padded[1:-1]
    seeds = torch.tensor([12345, 99], device=device)
    expected = R.resample_renoise_ref(view.contiguous(), **tensors, seeds=seeds, sigma=0.7, smoothing=1,
                                      layout=layout, patch=(1, 1, 1))
    total = expected.numel()
    canary = torch.full((total + 64,), float("nan"), device=device)
    out = canary[32:32 + total].view(expected.shape)
    index_args = [tensors[k] for k in ("anchor_t", "anchor_h", "anchor_w", "coord_t", "coord_h", "coord_w")]
    if backend == "triton":
        from dvg_engine.kernels import resample_renoise as kernel
        kernel.resample_renoise(view, *index_args, seeds, 0.7, 1, out, layout, (1, 1, 1))
    else:
        torch.ops.dvg._cpp_resample_renoise(view, *index_args, seeds, 0.7, 1, layout == "tokens", [1, 1, 1], out)
    assert bool(torch.isnan(canary[:32]).all()) and bool(torch.isnan(canary[32 + total:]).all()), \
        "the kernel wrote outside its output"
    assert bool(torch.isfinite(out).all()), "the kernel left poisoned output elements or read a NaN canary"
    _assert_matches_reference(out, expected, f"{backend} canary {layout}", backend)


# ---------------------------------------------------------------------------------------------------
# packed variant
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_packed_matches_per_sample_tokens(backend):
    device = _device_for(backend)
    chains = ["hv_like_0to1", "temporal_and_spatial", "single_frame"]
    patches = (1, 1, 1)
    x0s, lists, seeds, expected = [], {k: [] for k in ("anchor_t", "anchor_h", "anchor_w", "coord_t", "coord_h",
                                                         "coord_w")}, [], []
    for i, chain in enumerate(chains):
        x0, tensors, _ = _inputs(chain, batch=1, channels=2, device=device, seed=i)
        x0s.append(x0)
        for k in lists:
            lists[k].append(tensors[k])
        seeds.append(12345 + i)
        expected.append(R.resample_renoise_ref(x0, **tensors, seeds=torch.tensor([12345 + i], device=device),
                                               sigma=0.6, smoothing=1, layout="tokens", patch=patches)[0])
    with _registry.use_backend(backend):
        tokens, cu = R.resample_renoise_packed(x0s, lists["anchor_t"], lists["anchor_h"], lists["anchor_w"],
                                               lists["coord_t"], lists["coord_h"], lists["coord_w"],
                                               torch.tensor(seeds, device=device), 0.6, smoothing=1, patch=patches)
    lengths = [e.shape[0] for e in expected]
    assert cu.dtype == torch.int32 and cu.tolist() == [0] + list(np.cumsum(lengths))
    _assert_matches_reference(tokens, torch.cat(expected), f"{backend} packed", backend)


# ---------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------

def _valid_args():
    x0, tensors, seeds = _inputs("temporal_and_spatial", device=torch.device("cpu"))
    return dict(x0=x0, **tensors, seeds=seeds, sigma=0.5)


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(x0=a["x0"][0]), "x0="),
    (lambda a: a.update(x0=a["x0"].long()), "x0="),
    (lambda a: a.update(x0=a["x0"][:, :0]), "x0="),
    (lambda a: a.update(anchor_t=a["anchor_t"].long()), "anchor_t="),
    (lambda a: a.update(anchor_h=a["anchor_h"][:-1]), "anchor_h="),
    (lambda a: a.update(anchor_w=a["anchor_w"].flip(0)), "anchor_w="),
    (lambda a: a.update(anchor_h=torch.tensor([0, 2, 2, 6], dtype=torch.int32)), "anchor_h="),
    (lambda a: a.update(anchor_t=torch.tensor([1, 4, 8], dtype=torch.int32)), "anchor_t="),
    (lambda a: a.update(coord_t=a["coord_t"][:2]), "coord_t="),
    (lambda a: a.update(coord_w=a["coord_w"].int()), "coord_w="),
    (lambda a: a.update(coord_h=a["coord_h"] - 3), "coord_h="),
    (lambda a: a.update(seeds=a["seeds"][:1]), "seeds="),
    (lambda a: a.update(sigma=1.5), "sigma="),
    (lambda a: a.update(sigma=float("nan")), "sigma="),
    (lambda a: a.update(smoothing=3), "smoothing="),
    (lambda a: a.update(smoothing="blur"), "smoothing="),
    (lambda a: a.update(layout="nchw"), "layout="),
    (lambda a: a.update(layout="tokens", patch=(1, 2, 2)), "patch="),
    (lambda a: a.update(patch=(1, 0, 1)), r"patch\[1\]="),
    (lambda a: a.update(out_dtype=torch.int32), "out_dtype="),
])
def test_validation_errors_name_the_argument(change, match):
    args = _valid_args()
    change(args)
    x0 = args.pop("x0")
    with pytest.raises((ValueError, TypeError), match=match):
        R.resample_renoise(x0, **args)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["bcthw", "tokens"])
def test_empty_batch(backend, layout):
    device = _device_for(backend)
    x0, tensors, _ = _inputs("temporal_and_spatial", device=device)
    out = _call(backend, x0[:0], **tensors, seeds=torch.zeros(0, dtype=torch.int64, device=device), sigma=0.5,
                smoothing=1, layout=layout)
    assert out.shape == ((0, 3, 9, 7, 11) if layout == "bcthw" else (0, 9 * 7 * 11, 3))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_strided_index_tensors(backend):
    """Anchors, coordinates and seeds given as strided views give the same result as contiguous ones."""
    device = _device_for(backend)
    x0, tensors, seeds = _inputs("temporal_and_spatial", device=device)
    strided = {}
    for name, value in tensors.items():
        doubled = torch.stack([value, torch.full_like(value, -7)], dim=1).reshape(-1)
        strided[name] = doubled[::2]
        assert not strided[name].is_contiguous() or strided[name].numel() == 1
    seeds_strided = torch.stack([seeds, seeds * 0 + 5], dim=1).reshape(-1)[::2]
    expected = R.resample_renoise_ref(x0, **tensors, seeds=seeds, sigma=0.4, smoothing=1)
    actual = _call(backend, x0, **strided, seeds=seeds_strided, sigma=0.4, smoothing=1)
    _assert_matches_reference(actual, expected, f"{backend} strided index tensors", backend)


@requires_triton
def test_validate_false_skips_content_checks_only():
    """validate=False skips the checks that read tensor contents (a device sync on CUDA) — here the
    coordinates ≥ 0 rule, which the Triton kernel does not need — but keeps the metadata checks."""
    args = _valid_args()
    x0 = args.pop("x0").to(DEVICE)
    args = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    args["coord_h"] = args["coord_h"] - 3
    with pytest.raises(ValueError, match="coord_h="):
        _call("triton", x0, **args)
    out = _call("triton", x0, **args, validate=False)
    assert out.shape == (2, 3, 9, 7, 11) and bool(torch.isfinite(out).all())
    with pytest.raises(ValueError, match="seeds="):
        _call("triton", x0, **{**args, "seeds": args["seeds"][:1]}, validate=False)


@requires_cpp
def test_cpp_op_rejects_out_of_range_anchors_itself():
    """The C++ kernel indexes with the anchors, so it checks them even when called directly."""
    args = _valid_args()
    out = torch.empty(2, 3, 9, 7, 11)
    bad = torch.tensor([0, 2, 9, 6], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="anchor_h"):
        torch.ops.dvg._cpp_resample_renoise(args["x0"], args["anchor_t"], bad, args["anchor_w"], args["coord_t"],
                                            args["coord_h"], args["coord_w"], args["seeds"], 0.5, 0, False,
                                            [1, 1, 1], out)


# ---------------------------------------------------------------------------------------------------
# backend selection, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_forced_backend_is_the_one_that_runs(backend):
    args = _valid_args()
    x0 = args.pop("x0").to(_device_for(backend))
    args = {k: (v.to(x0.device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    _registry.reset_call_counts()
    _call(backend, x0, **args)
    assert _registry.CALL_COUNTS == {("resample_renoise", backend): 1}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_opcheck(backend):
    device = _device_for(backend)
    src = [[0, 2], [0, 2], [0, 3]]
    dst = [[0, 1, 2], [0, 1, 2], [0, 1, 2, 3]]
    x0 = torch.randn(1, 2, 2, 2, 2, device=device)
    t = R.transition_tensors(src, dst, device)
    seeds = torch.tensor([5], device=device)
    with _registry.use_backend(backend):
        for smoothing, out_dtype, layout, patch in ((1, None, "bcthw", [1, 1, 1]),
                                                    (0, torch.float16, "tokens", [1, 1, 2])):
            torch.library.opcheck(torch.ops.dvg.resample_renoise.default,
                                  (x0, t["anchor_t"], t["anchor_h"], t["anchor_w"], t["coord_t"], t["coord_h"],
                                   t["coord_w"], seeds, 0.25, smoothing, out_dtype, layout, patch, True))
        torch.library.opcheck(torch.ops.dvg.resample_renoise_packed.default,
                              ([x0, x0[:, :, :1]], [t["anchor_t"], t["anchor_t"][:1] * 0],
                               [t["anchor_h"]] * 2, [t["anchor_w"]] * 2,
                               [t["coord_t"], t["coord_t"][:1]], [t["coord_h"]] * 2, [t["coord_w"]] * 2,
                               torch.tensor([1, 2], device=device), 0.5, 0, None, [1, 1, 1], True))


def test_torch_compile_fullgraph():
    x0, tensors, seeds = _inputs("hv_like_0to1", device=torch.device("cpu"))

    keys = ("anchor_t", "anchor_h", "anchor_w", "coord_t", "coord_h", "coord_w")

    def step(x):
        up = R.resample_renoise(x * 2.0, **tensors, seeds=seeds, sigma=0.5, smoothing=1)
        tokens = R.resample_renoise(x, **tensors, seeds=seeds, sigma=0.5, layout="tokens", patch=(1, 2, 2))
        packed, _ = R.resample_renoise_packed([x[:1], x[1:] + 1.0], *[[tensors[k]] * 2 for k in keys], seeds, 0.5,
                                              patch=(1, 2, 2))
        return up.sum() + tokens.sum() + packed.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x0), step(x0))


def test_works_without_triton():
    """With the triton import blocked, the op imports and runs on the torch and C++ backends, auto
    falls back without touching triton, and an explicit triton request says why it cannot run."""
    script = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ImportError("triton blocked for this test")
        sys.meta_path.insert(0, Block())
        import torch
        from dvg_engine.ops import resample as R, _registry
        axes = [[0, 2], [0, 1, 3], [0, 2]]
        dst = [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2]]
        x0 = torch.randn(1, 2, 2, 3, 2)
        t = R.transition_tensors(axes, dst)
        seeds = torch.tensor([12345])
        ref = R.resample_renoise_ref(x0, **t, seeds=seeds, sigma=0.5, smoothing=1)
        for backend in ["torch", "auto"] + (["cpp"] if R._cpp_kernel_available() else []):
            with _registry.use_backend(backend):
                out = R.resample_renoise(x0, **t, seeds=seeds, sigma=0.5, smoothing=1)
            assert torch.equal(out, ref), backend
        try:
            with _registry.use_backend("triton"):
                R.resample_renoise(x0, **t, seeds=seeds, sigma=0.5)
        except RuntimeError as exc:
            assert "triton is not installed" in str(exc), exc
        else:
            raise AssertionError("explicit triton without triton did not raise")
        assert "triton" not in sys.modules
        print("OK")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr


@requires_cpp
def test_cpp_portable_paths():
    """DVG_CPP_SIMD=0 makes the C++ kernel use its portable paths (scalar libm noise, libm fma), which a CPU
    without AVX2/AVX-512 runs; they must equal the reference too."""
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, "tests")
        import test_resample_renoise as T
        from dvg_engine.ops import resample as R
        for chain in T.CHAINS:
            for smoothing in (0, 1, 2):
                x0, tensors, seeds = T._inputs(chain, device=torch.device("cpu"))
                expected = R.resample_renoise_ref(x0, **tensors, seeds=seeds, sigma=0.7, smoothing=smoothing,
                                                  layout="tokens")
                actual = T._call("cpp", x0, **tensors, seeds=seeds, sigma=0.7, smoothing=smoothing, layout="tokens")
                T._assert_matches_reference(actual, expected, f"portable {chain} {smoothing}", "cpp")
        print("OK")
    """)
    env = dict(os.environ, DVG_CPP_SIMD="0")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=str(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr
