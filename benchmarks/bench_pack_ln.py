"""Benchmarks of the varlen pack / unpack (with and without the fused RoPE) and the segment-modulated LayerNorm.

All three are memory-bound, so they are reported in GB/s (bytes read + written / time) next to a plain copy of
the same bytes on the same device, the ceiling:

* CPU: C++ backend vs the unchanged torch reference (`upcast=False`) and vs `dst.copy_(src)`.
  Targets: modulated_layer_norm ≥ 3× the torch reference; pack/unpack ≥ 1× torch and ≥ 70% of copy bandwidth.
* GPU: Triton kernels vs the torch reference and the device copy, timed with `triton.testing.do_bench`
  (median). Target: ≥ 80% of copy bandwidth.

Usage:
    python benchmarks/bench_pack_ln.py [--device cpu|cuda] [--quick]   # table of results
    python benchmarks/bench_pack_ln.py --check                          # GPU correctness: PASS/FAIL lines
    pytest benchmarks/bench_pack_ln.py                                  # CPU, pytest-benchmark
`run(device, quick)` returns the rows (used by benchmarks/gpu_check.py and `dvg bench`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from dvg_engine.ops import _registry
from dvg_engine.ops import layer_norm as LN
from dvg_engine.ops import pack as P

# 100k packed tokens: two samples on different grids (10×50×100 and 11×45×100 latent tokens) plus
# 256-padded text with 256 and 244 valid tokens.
GRIDS = [(10, 50, 100), (11, 45, 100)]
TEXT_LENS = [256, 244]
TEXT_PAD = 256
ROPE_AXES = (16, 56, 56)


def _pack_inputs(heads: int, head_dim: int, dtype, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    latent_lens = [t * h * w for t, h, w in GRIDS]
    cu_latent, cu_seqlens, total, _ = P.packed_layout(latent_lens, TEXT_LENS, device)
    latent = torch.randn(sum(latent_lens), heads, head_dim, generator=gen).to(dtype).to(device)
    text = torch.randn(len(GRIDS), TEXT_PAD, heads, head_dim, generator=gen).to(dtype).to(device)
    grid_sizes = torch.tensor(GRIDS, dtype=torch.int32, device=device)
    return latent, text, cu_latent, cu_seqlens, total, grid_sizes


def _ln_inputs(tokens: int, dim: int, dtype, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [tokens // 2, tokens - tokens // 2]
    cu_seqlens = P.packed_layout(lengths, [0, 0], device)[1]
    x = torch.randn(tokens, dim, generator=gen).to(dtype).to(device)
    emb = (torch.randn(2, 6 * dim, generator=gen) * 0.5).to(dtype).to(device)
    shift, scale = emb.chunk(6, dim=1)[:2]
    return x, cu_seqlens, scale, shift


def _time_ms(fn, device, reps: int) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=25, rep=max(50, reps * 10)))
    fn()  # warm-up (first-touch page faults, thread pool start)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _row(op, backend, shape, dtype, ms, nbytes, ceilings=None, torch_ms=None):
    gbs = nbytes / (ms * 1e-3) / 1e9
    row = {"op": op, "backend": backend, "shape": shape, "dtype": str(dtype).replace("torch.", ""),
           "ms": round(ms, 3), "GB/s": round(gbs, 1)}
    if ceilings:
        row["% of copy_"] = round(100 * gbs / ceilings[0], 1)
        row["% of clone"] = round(100 * gbs / ceilings[1], 1)
    if torch_ms:
        row["× torch ref"] = round(torch_ms / ms, 2)
    return row


def _ceilings(nbytes: int, dtype, device, reps: int, shape: str, rows: list):
    """Copy bandwidth of `nbytes / 2` bytes: into a preallocated buffer (`copy_`) and into a fresh one
    (`clone`). The ops return new tensors, so on CPU they pay the first-touch page faults of their output
    that `copy_` does not; `clone` pays them too (on CUDA the caching allocator makes both equal)."""
    src = torch.empty(nbytes // 2 // torch.finfo(dtype).bits * 8, dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    copy_ms = _time_ms(lambda: dst.copy_(src), device, reps)
    clone_ms = _time_ms(lambda: src.clone(), device, reps)
    rows.append(_row("copy (ceiling)", "torch copy_", shape, dtype, copy_ms, nbytes))
    rows.append(_row("copy (ceiling)", "torch clone", shape, dtype, clone_ms, nbytes))
    return nbytes / (copy_ms * 1e-3) / 1e9, nbytes / (clone_ms * 1e-3) / 1e9


def run(device: str = "cpu", quick: bool = False) -> list:
    """Rows of {op, backend, shape, dtype, ms, GB/s, % of copy_, % of clone, × torch ref}."""
    device = torch.device(device)
    fast = "triton" if device.type == "cuda" else "cpp"
    if fast == "cpp" and not _registry.cpp_available():
        raise RuntimeError("the C++ extension dvg_engine._C is not built; nothing to compare on CPU")
    dtype = torch.bfloat16
    heads = 24 if device.type == "cuda" else (2 if quick else 8)
    head_dim = 128
    reps = 3 if quick else 7
    rows = []

    latent, text, cu_latent, cu_seqlens, total, grid_sizes = _pack_inputs(heads, head_dim, dtype, device)
    row_bytes = heads * head_dim * latent.element_size()
    total_latent = latent.shape[0]
    shape = f"{total} tok × {heads}×{head_dim}"
    pack_bytes = 2 * total * row_bytes                      # read every packed row once, write it once
    unpack_bytes = total * row_bytes + (total_latent + len(GRIDS) * TEXT_PAD) * row_bytes
    copy_gbs = _ceilings(pack_bytes, dtype, device, reps, shape, rows)

    inv_freq = P.rope_inv_freq(ROPE_AXES, 256.0, device)
    pack_args = (latent, text, cu_latent, cu_seqlens, total)
    ref_ms = _time_ms(lambda: P.pack_tokens_reference(*pack_args, upcast=False), device, reps)
    rows.append(_row("pack_tokens", "torch ref", shape, dtype, ref_ms, pack_bytes, copy_gbs))
    with _registry.use_backend(fast):
        ms = _time_ms(lambda: P.pack_tokens(*pack_args, validate=False), device, reps)
        rows.append(_row("pack_tokens", fast, shape, dtype, ms, pack_bytes, copy_gbs, ref_ms))
        packed = P.pack_tokens(*pack_args)

    ref_ms = _time_ms(lambda: P.unpack_tokens_reference(packed, cu_latent, cu_seqlens, total_latent, TEXT_PAD),
                      device, reps)
    rows.append(_row("unpack_tokens", "torch ref", shape, dtype, ref_ms, unpack_bytes, copy_gbs))
    with _registry.use_backend(fast):
        ms = _time_ms(lambda: P.unpack_tokens(packed, cu_latent, cu_seqlens, total_latent, TEXT_PAD, validate=False),
                      device, reps)
        rows.append(_row("unpack_tokens", fast, shape, dtype, ms, unpack_bytes, copy_gbs, ref_ms))
    del packed

    rope_args = (latent, latent, text, text, cu_latent, cu_seqlens, grid_sizes, total)
    ref_ms = _time_ms(lambda: (P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total, grid_sizes,
                                                       inv_freq, ROPE_AXES, upcast=False),
                               P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total, grid_sizes,
                                                       inv_freq, ROPE_AXES, upcast=False)), device, reps)
    rows.append(_row("pack_qk_rope (q+k)", "torch ref", shape, dtype, ref_ms, 2 * pack_bytes, copy_gbs))
    with _registry.use_backend(fast):
        ms = _time_ms(lambda: P.pack_qk_rope(*rope_args, ROPE_AXES, inv_freq=inv_freq, validate=False), device, reps)
        rows.append(_row("pack_qk_rope (q+k)", fast, shape, dtype, ms, 2 * pack_bytes, copy_gbs, ref_ms))
    del latent, text

    tokens = 100_000 if device.type == "cuda" else (8_000 if quick else 32_000)
    dim = 3072
    x, cu, scale, shift = _ln_inputs(tokens, dim, dtype, device)
    ln_bytes = 2 * x.numel() * x.element_size()
    ln_shape = f"{tokens} tok × {dim}"
    ln_copy_gbs = _ceilings(ln_bytes, dtype, device, reps, ln_shape, rows)
    ref_ms = _time_ms(lambda: LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=False), device, reps)
    rows.append(_row("modulated_layer_norm", "torch ref", ln_shape, dtype, ref_ms, ln_bytes, ln_copy_gbs))
    with _registry.use_backend(fast):
        ms = _time_ms(lambda: LN.modulated_layer_norm(x, cu, scale, shift, validate=False), device, reps)
        rows.append(_row("modulated_layer_norm", fast, ln_shape, dtype, ms, ln_bytes, ln_copy_gbs, ref_ms))
    return rows


def check(device: str = "cuda", dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> bool:
    """GPU correctness of the Triton kernels against the torch reference on the same device, every dtype;
    prints one PASS/FAIL line per check. (No diffusers needed: the reference's RoPE is checked against
    diffusers by the CPU tests.)"""
    device = torch.device(device)
    ok_all = True

    def report(name, ok, detail=""):
        nonlocal ok_all
        ok_all &= ok
        print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip(), flush=True)

    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
    for dtype in dtypes:
        latent, text, cu_latent, cu_seqlens, total, grid_sizes = _pack_inputs(4, 128, dtype, device)
        with _registry.use_backend("torch"):
            ref = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
            q_ref, k_ref = P.pack_qk_rope(latent, latent, text, text, cu_latent, cu_seqlens, grid_sizes, total, ROPE_AXES)
            lat_ref, txt_ref = P.unpack_tokens(ref, cu_latent, cu_seqlens, latent.shape[0], TEXT_PAD)
        with _registry.use_backend("triton"):
            got = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total)
            q, k = P.pack_qk_rope(latent, latent, text, text, cu_latent, cu_seqlens, grid_sizes, total, ROPE_AXES)
            lat, txt = P.unpack_tokens(got, cu_latent, cu_seqlens, latent.shape[0], TEXT_PAD)
        name = str(dtype).replace("torch.", "")
        report(f"pack_tokens {name}", torch.equal(got, ref))
        report(f"unpack_tokens {name}", torch.equal(lat, lat_ref) and torch.equal(txt, txt_ref))
        for label, a, b in (("q", q, q_ref), ("k", k, k_ref)):
            err = (a.float() - b.float()).abs().max().item()
            bound = tol[dtype] * (1 + b.float().abs().max().item())
            report(f"pack_qk_rope {label} {name}", err <= bound, f"max err {err:.3g} (allowed {bound:.3g})")
        x, cu, scale, shift = _ln_inputs(4096, 3072, dtype, device)
        with _registry.use_backend("triton"):
            y = LN.modulated_layer_norm(x, cu, scale, shift)
        ref64 = LN.modulated_layer_norm_reference(x.double(), cu, scale.double(), shift.double(), upcast=False)
        same = LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=False)
        k_err = (y.double() - ref64).abs().max().item()
        t_err = (same.double() - ref64).abs().max().item()
        floor = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}[dtype]
        report(f"modulated_layer_norm {name}", k_err <= 2 * t_err + floor,
               f"max err {k_err:.3g} vs same-dtype torch {t_err:.3g}")
    return ok_all


# ----------------------------------------------------------------------------------------------------
# pytest-benchmark (CPU): `pytest benchmarks/bench_pack_ln.py`
# ----------------------------------------------------------------------------------------------------

def _bench_case(benchmark, backend, fn):
    import pytest
    if backend == "cpp" and not _registry.cpp_available():
        pytest.skip("the C++ extension dvg_engine._C is not built")
    with _registry.use_backend(backend):
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)


def _pytest_params():
    try:
        import pytest
    except ImportError:  # plain `python bench_pack_ln.py` without pytest
        return lambda f: f
    return pytest.mark.parametrize("backend", ["torch", "cpp"])


@_pytest_params()
def test_bench_pack_tokens(benchmark, backend):
    latent, text, cu_latent, cu_seqlens, total, _ = _pack_inputs(8, 128, torch.bfloat16, torch.device("cpu"))
    if backend == "torch":
        fn = lambda: P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total, upcast=False)  # noqa: E731
    else:
        fn = lambda: P.pack_tokens(latent, text, cu_latent, cu_seqlens, total, validate=False)  # noqa: E731
    _bench_case(benchmark, backend, fn)


@_pytest_params()
def test_bench_unpack_tokens(benchmark, backend):
    latent, text, cu_latent, cu_seqlens, total, _ = _pack_inputs(8, 128, torch.bfloat16, torch.device("cpu"))
    packed = P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total)
    if backend == "torch":
        fn = lambda: P.unpack_tokens_reference(packed, cu_latent, cu_seqlens, latent.shape[0], TEXT_PAD)  # noqa: E731
    else:
        fn = lambda: P.unpack_tokens(packed, cu_latent, cu_seqlens, latent.shape[0], TEXT_PAD, validate=False)  # noqa: E731
    _bench_case(benchmark, backend, fn)


@_pytest_params()
def test_bench_modulated_layer_norm(benchmark, backend):
    x, cu, scale, shift = _ln_inputs(32_000, 3072, torch.bfloat16, torch.device("cpu"))
    if backend == "torch":
        fn = lambda: LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=False)  # noqa: E731
    else:
        fn = lambda: LN.modulated_layer_norm(x, cu, scale, shift, validate=False)  # noqa: E731
    _bench_case(benchmark, backend, fn)


def test_bench_copy_ceiling(benchmark):
    src = torch.empty(100_000 * 8 * 128, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    benchmark.pedantic(lambda: dst.copy_(src), rounds=5, warmup_rounds=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repetitions")
    parser.add_argument("--check", action="store_true", help="GPU correctness check (PASS/FAIL), no timing")
    args = parser.parse_args(argv)
    if args.check:
        if not torch.cuda.is_available():
            print("bench_pack_ln --check: no CUDA GPU found; nothing to check")
            return 0
        return 0 if check("cuda") else 1
    rows = run(args.device, args.quick)
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
