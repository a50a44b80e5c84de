"""Benchmarks of the varlen pack / unpack (with and without the fused RoPE) and the segment-modulated LayerNorm.

All three are memory-bound, so they are reported in GB/s (bytes read + written / time) next to a plain copy of
the same bytes on the same device, the ceiling (`copy_` into an existing buffer). Each op is measured in both of
its forms:

* allocating (`pack_tokens(...)` returns a new tensor). On CPU a fresh buffer is faulted in page by page on
  first touch (torch's CPU allocator does not cache, and glibc maps a request of 32 MiB or more afresh unless a
  free heap chunk fits): 12.5k faults of 4 KiB for 50 MB, which cost several times the copy itself — `clone` (a
  copy into a fresh buffer, also reported) typically runs at ~20-25 % of copy_. For an output of 32 MiB or more
  the C++ ops keep at::empty's memory when it is already faulted in and otherwise give the output its own mapping
  advised as transparent huge pages (csrc/cpu_common.cpp; one fault per 2 MiB, the kernel still zeroes it), so
  their allocating forms run at ~35-100 % of copy_; the variant says so ("own huge pages unless recycled").
  DVG_CPP_HUGEPAGES=0 turns that off, =1 always takes the mapping;
* out variant (`pack_tokens(..., out=buf)`, `dvg::pack_tokens_out`): no allocation, the kernel against the
  memory bandwidth.

With `THP_MEM_ALLOC_ENABLE=1` (torch's own switch: 2 MiB-aligned CPU allocations advised as transparent huge
pages) clone and the torch references get huge pages too; the allocating rows then say so in their `variant`.

* CPU: C++ backend vs the unchanged torch reference (`upcast=False`), timed round-robin (A B C A B C ...: the
  callables of one table take turns, so load from other processes hits them alike), medians of the rounds, and
  the per-round range of the ratio to the reference (the reference ran in the same round).
  Targets: modulated_layer_norm ≥ 3× the torch reference; pack/unpack ≥ 1× torch and ≥ 70% of copy_
  bandwidth (the `met` column judges both forms on both).
* GPU: Triton kernels vs the torch reference and the device copy, timed with `triton.testing.do_bench`
  (median). Target: ≥ 80% of copy bandwidth (the caching allocator makes clone ≈ copy_ there).

Usage:
    python benchmarks/bench_pack_ln.py [--device cpu|cuda] [--quick]   # table of results
    python benchmarks/bench_pack_ln.py --check                          # GPU correctness: PASS/FAIL lines
    pytest benchmarks/bench_pack_ln.py                                  # CPU, pytest-benchmark
`run(device, quick)` returns the rows (used by benchmarks/gpu_check.py and `dvg bench`).
"""
from __future__ import annotations

import argparse
import os
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


def _time_interleaved(fns: dict, device, reps: int, slow: dict = None, slow_reps: int = None) -> dict:
    """Per-round ms of each callable: {name: [ms, ...]}. CPU: the callables run in turn, round after round (A B C A B
    C ...), so load from other processes on a shared machine hits all of them alike and a ratio of two of them can
    be taken per round; one warm-up round first (thread pool start, first-touch faults of the preallocated
    buffers). `slow` callables (the references of ops without a target) join only the first `slow_reps` rounds.
    CUDA: `triton.testing.do_bench` (median) per callable, one "round"."""
    slow = slow or {}
    if device.type == "cuda":
        from triton.testing import do_bench
        return {name: [float(do_bench(fn, warmup=25, rep=max(50, reps * 10)))] for name, fn in {**fns, **slow}.items()}
    for fn in list(fns.values()) + list(slow.values()):
        fn()
    times = {name: [] for name in list(fns) + list(slow)}
    for round_index in range(reps):
        batch = dict(fns)
        if round_index < (slow_reps if slow_reps is not None else reps):
            batch.update(slow)
        for name, fn in batch.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _median(values) -> float:
    return statistics.median(values)


# csrc/cpu_common.cpp: outputs of at least this many bytes get their own huge-page mapping (see the docstring)
HUGE_OUTPUT_MIN_BYTES = 32 << 20


def cpp_huge_outputs() -> str:
    """How the C++ ops give large fresh outputs memory in this process (csrc/cpu_common.cpp): "off" (not Linux, THP
    `never`, or DVG_CPP_HUGEPAGES=0), "always" (DVG_CPP_HUGEPAGES=1: an own huge-page mapping), "auto" (the mapping
    unless at::empty's memory is already faulted in)."""
    setting = os.environ.get("DVG_CPP_HUGEPAGES")
    if not sys.platform.startswith("linux") or setting == "0":
        return "off"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            policy = fh.read()
    except OSError:
        return "off"
    if "[always]" not in policy and "[madvise]" not in policy:
        return "off"
    return "always" if setting == "1" else "auto"


def _fresh_variant(allocating: str, device, output_bytes: int) -> str:
    """The variant label of a C++ allocating row: says when its output may get a huge-page mapping of its own."""
    if device.type != "cpu" or output_bytes < HUGE_OUTPUT_MIN_BYTES:
        return allocating
    mode = cpp_huge_outputs()
    return allocating + {"off": "", "always": " (own huge pages)", "auto": " (own huge pages unless recycled)"}[mode]


def _gbs(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


class _Table:
    """Rows of one op: the two copy ceilings, then each variant. Every row states its % of `copy_` into an existing
    buffer (the memory-bandwidth ceiling); allocating rows also their % of `clone` (a copy into a fresh buffer,
    which pays the first-touch page faults of its output on CPU: what a naive allocating op pays)."""

    def __init__(self, device, rows: list, shape: str, dtype):
        self.device, self.rows, self.shape, self.dtype = device, rows, shape, str(dtype).replace("torch.", "")
        self.thp = device.type == "cpu" and os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
        self.copy_gbs = self.clone_gbs = None

    def ceilings(self, copy_ms: float, clone_ms: float, nbytes: int) -> None:
        self.copy_gbs, self.clone_gbs = _gbs(nbytes, copy_ms), _gbs(nbytes, clone_ms)
        clone = "clone (fresh buffer" + (", THP_MEM_ALLOC_ENABLE=1)" if self.thp else ")")
        for variant, ms in (("copy_ (existing buffer)", copy_ms), (clone, clone_ms)):
            self.rows.append({"op": "copy (ceiling)", "backend": "torch", "variant": variant, "shape": self.shape,
                              "dtype": self.dtype, "ms": round(ms, 3), "GB/s": round(_gbs(nbytes, ms), 1)})

    def op(self, op: str, backend: str, variant: str, times: list, nbytes: int, ref_times=None, target=None) -> dict:
        """times: per-round ms of this row (median reported); ref_times: the torch reference's ms of the same
        rounds, for "× torch ref" (ratio of medians) and its per-round range. target: (min % of copy_, min × torch
        ref) or None; `met` says whether this row meets both (the ratio judged on the ratio of medians)."""
        ms = _median(times)
        gbs = _gbs(nbytes, ms)
        row = {"op": op, "backend": backend, "variant": variant, "shape": self.shape, "dtype": self.dtype,
               "ms": round(ms, 3), "GB/s": round(gbs, 1), "% of copy_": round(100 * gbs / self.copy_gbs, 1)}
        if variant.startswith("allocating"):
            row["% of clone"] = round(100 * gbs / self.clone_gbs, 1)
        speedup = None
        if ref_times:
            speedup = _median(ref_times) / ms
            row["× torch ref"] = round(speedup, 2)
            per_round = sorted(r / t for r, t in zip(ref_times, times))
            if len(per_round) > 1:
                row["× ref per round (min–max)"] = f"{per_round[0]:.2f}–{per_round[-1]:.2f}"
        if target is not None and backend != "torch ref":
            min_pct, min_speedup = target
            wants, ok = [], True
            if min_pct is not None:
                wants.append(f">= {min_pct}% of copy_")
                ok &= 100 * gbs / self.copy_gbs >= min_pct
            if min_speedup is not None and speedup is not None:
                wants.append(f">= {min_speedup}x torch ref")
                ok &= speedup >= min_speedup
            row["target"] = ", ".join(wants)
            row["met"] = "yes" if ok else "NO"
        self.rows.append(row)
        return row


def run(device: str = "cpu", quick: bool = False) -> list:
    """Rows of {op, backend, variant, shape, dtype, ms, GB/s, % of copy_, % of clone, × torch ref,
    × ref per round (min–max), target, met}.

    `variant` is "allocating" (the op returns a new tensor) or "out=" (the out variant writes into a preallocated
    tensor); "% of copy_" is against `copy_` into an existing buffer, "% of clone" (allocating rows) against a copy
    into a fresh buffer; a C++ allocating row whose output may get its own huge-page mapping says so in its
    variant ("allocating (own huge pages unless recycled)", or "(own huge pages)" with DVG_CPP_HUGEPAGES=1). ms are medians of interleaved rounds (7 in quick mode, 11 otherwise; the fused-RoPE
    reference, which has no target and takes ~1 s, joins 3 of them). Targets (issue 3), both forms: CPU
    pack/unpack >= 70% of copy_ bandwidth and >= 1x the torch reference, modulated_layer_norm >= 3x the torch
    reference; GPU pack/unpack/modulated_layer_norm >= 80% of copy bandwidth. modulated_layer_norm is measured in
    float32, float16 and bfloat16."""
    device = torch.device(device)
    fast = "triton" if device.type == "cuda" else "cpp"
    if fast == "cpp" and not _registry.cpp_available():
        raise RuntimeError("the C++ extension dvg_engine._C is not built; nothing to compare on CPU")
    gpu = device.type == "cuda"
    # torch reads THP_MEM_ALLOC_ENABLE once per process; it changes what a fresh CPU buffer costs (see above)
    allocating = "allocating (THP_MEM_ALLOC_ENABLE=1)" if not gpu and os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" \
        else "allocating"
    copy_target = (80, None) if gpu else (70, 1.0)
    ln_target = (80, None) if gpu else (None, 3.0)
    dtype = torch.bfloat16
    heads = 24 if gpu else (2 if quick else 8)
    head_dim = 128
    reps = 7 if quick else 11
    rows = []

    latent, text, cu_latent, cu_seqlens, total, grid_sizes = _pack_inputs(heads, head_dim, dtype, device)
    row_bytes = heads * head_dim * latent.element_size()
    total_latent = latent.shape[0]
    table = _Table(device, rows, f"{total} tok × {heads}×{head_dim}", dtype)
    pack_bytes = 2 * total * row_bytes                      # read every packed row once, write it once
    unpack_bytes = total * row_bytes + (total_latent + len(GRIDS) * TEXT_PAD) * row_bytes
    src = torch.empty(pack_bytes // 2 // latent.element_size(), dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    inv_freq = P.rope_inv_freq(ROPE_AXES, 256.0, device)
    pack_args = (latent, text, cu_latent, cu_seqlens, total)
    packed = P.pack_tokens(*pack_args)
    out, out2 = torch.empty_like(packed), torch.empty_like(packed)
    lat_out, txt_out = torch.empty_like(latent), torch.empty_like(text)
    unpack_args = (packed, cu_latent, cu_seqlens, total_latent, TEXT_PAD)
    rope_args = (latent, latent, text, text, cu_latent, cu_seqlens, grid_sizes, total, ROPE_AXES)

    def rope_ref():
        return tuple(P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total, grid_sizes, inv_freq,
                                             ROPE_AXES, upcast=False) for _ in range(2))

    with _registry.use_backend(fast):
        times = _time_interleaved({
            "copy_": lambda: dst.copy_(src),
            "clone": lambda: src.clone(),
            "pack ref": lambda: P.pack_tokens_reference(*pack_args, upcast=False),
            "pack": lambda: P.pack_tokens(*pack_args, validate=False),
            "pack out": lambda: P.pack_tokens(*pack_args, validate=False, out=out),
            "unpack ref": lambda: P.unpack_tokens_reference(*unpack_args),
            "unpack": lambda: P.unpack_tokens(*unpack_args, validate=False),
            "unpack out": lambda: P.unpack_tokens(*unpack_args, validate=False, latent_out=lat_out, text_out=txt_out),
            "rope": lambda: P.pack_qk_rope(*rope_args, inv_freq=inv_freq, validate=False),
            "rope out": lambda: P.pack_qk_rope(*rope_args, inv_freq=inv_freq, validate=False, q_out=out, k_out=out2),
        }, device, reps, slow={"rope ref": rope_ref}, slow_reps=3)
    table.ceilings(_median(times["copy_"]), _median(times["clone"]), pack_bytes)
    # largest single output of each op (unpack: the latent; the RoPE pack: q and k each)
    for op, key, nbytes, out_bytes, target in (
            ("pack_tokens", "pack", pack_bytes, total * row_bytes, copy_target),
            ("unpack_tokens", "unpack", unpack_bytes, total_latent * row_bytes, copy_target),
            ("pack_qk_rope (q+k)", "rope", 2 * pack_bytes, total * row_bytes, None)):
        ref = times[f"{key} ref"]
        table.op(op, "torch ref", allocating, ref, nbytes)
        table.op(op, fast, _fresh_variant(allocating, device, out_bytes), times[key], nbytes, ref, target)
        table.op(op, fast, "out=", times[f"{key} out"], nbytes, ref, target)
    del latent, text, packed, out, out2, lat_out, txt_out, src, dst

    tokens = 100_000 if gpu else (8_000 if quick else 32_000)
    dim = 3072
    for ln_dtype, label in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        x, cu, scale, shift = _ln_inputs(tokens, dim, ln_dtype, device)
        ln_bytes = 2 * x.numel() * x.element_size()
        table = _Table(device, rows, f"{tokens} tok × {dim}", ln_dtype)
        y = torch.empty_like(x)
        with _registry.use_backend(fast):
            times = _time_interleaved({
                "copy_": lambda: y.copy_(x),
                "clone": lambda: x.clone(),
                "ref": lambda: LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=False),
                "ln": lambda: LN.modulated_layer_norm(x, cu, scale, shift, validate=False),
                "ln out": lambda: LN.modulated_layer_norm(x, cu, scale, shift, validate=False, out=y),
            }, device, reps)
        table.ceilings(_median(times["copy_"]), _median(times["clone"]), ln_bytes)
        op = f"modulated_layer_norm {label}"
        table.op(op, "torch ref", allocating, times["ref"], ln_bytes)
        table.op(op, fast, _fresh_variant(allocating, device, ln_bytes // 2), times["ln"], ln_bytes, times["ref"],
                 ln_target)
        table.op(op, fast, "out=", times["ln out"], ln_bytes, times["ref"], ln_target)
        del x, y
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
            # out variants into NaN-poisoned buffers: every element must be written
            got_out = P.pack_tokens(latent, text, cu_latent, cu_seqlens, total, out=torch.full_like(ref, float("nan")))
            lat_out, txt_out = P.unpack_tokens(got, cu_latent, cu_seqlens, latent.shape[0], TEXT_PAD,
                                               latent_out=torch.full_like(lat_ref, float("nan")),
                                               text_out=torch.full_like(txt_ref, float("nan")))
        name = str(dtype).replace("torch.", "")
        report(f"pack_tokens {name}", torch.equal(got, ref))
        report(f"unpack_tokens {name}", torch.equal(lat, lat_ref) and torch.equal(txt, txt_ref))
        report(f"pack_tokens out= {name}", torch.equal(got_out, ref))
        report(f"unpack_tokens out= {name}", torch.equal(lat_out, lat_ref) and torch.equal(txt_out, txt_ref))
        for label, a, b in (("q", q, q_ref), ("k", k, k_ref)):
            err = (a.float() - b.float()).abs().max().item()
            bound = tol[dtype] * (1 + b.float().abs().max().item())
            report(f"pack_qk_rope {label} {name}", err <= bound, f"max err {err:.3g} (allowed {bound:.3g})")
        x, cu, scale, shift = _ln_inputs(4096, 3072, dtype, device)
        with _registry.use_backend("triton"):
            y = LN.modulated_layer_norm(x, cu, scale, shift)
            y_out = LN.modulated_layer_norm(x, cu, scale, shift, out=torch.full_like(x, float("nan")))
        report(f"modulated_layer_norm out= {name}", torch.equal(y_out, y))
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
    backend = backend.split()[0]  # "cpp out=" runs the C++ out variant
    if backend == "cpp" and not _registry.cpp_available():
        pytest.skip("the C++ extension dvg_engine._C is not built")
    with _registry.use_backend(backend):
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)


def _pytest_params():
    try:
        import pytest
    except ImportError:  # plain `python bench_pack_ln.py` without pytest
        return lambda f: f
    return pytest.mark.parametrize("backend", ["torch", "cpp", "cpp out="])


@_pytest_params()
def test_bench_pack_tokens(benchmark, backend):
    latent, text, cu_latent, cu_seqlens, total, _ = _pack_inputs(8, 128, torch.bfloat16, torch.device("cpu"))
    out = torch.empty((total, *latent.shape[1:]), dtype=latent.dtype)
    if backend == "torch":
        fn = lambda: P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total, upcast=False)  # noqa: E731
    else:
        kwargs = {"out": out} if backend == "cpp out=" else {}
        fn = lambda: P.pack_tokens(latent, text, cu_latent, cu_seqlens, total, validate=False, **kwargs)  # noqa: E731
    _bench_case(benchmark, backend, fn)


@_pytest_params()
def test_bench_unpack_tokens(benchmark, backend):
    latent, text, cu_latent, cu_seqlens, total, _ = _pack_inputs(8, 128, torch.bfloat16, torch.device("cpu"))
    packed = P.pack_tokens_reference(latent, text, cu_latent, cu_seqlens, total)
    if backend == "torch":
        fn = lambda: P.unpack_tokens_reference(packed, cu_latent, cu_seqlens, latent.shape[0], TEXT_PAD)  # noqa: E731
    else:
        kwargs = {"latent_out": torch.empty_like(latent), "text_out": torch.empty_like(text)} \
            if backend == "cpp out=" else {}
        fn = lambda: P.unpack_tokens(packed, cu_latent, cu_seqlens, latent.shape[0], TEXT_PAD, validate=False,  # noqa: E731
                                     **kwargs)
    _bench_case(benchmark, backend, fn)


@_pytest_params()
def test_bench_modulated_layer_norm(benchmark, backend):
    x, cu, scale, shift = _ln_inputs(32_000, 3072, torch.bfloat16, torch.device("cpu"))
    if backend == "torch":
        fn = lambda: LN.modulated_layer_norm_reference(x, cu, scale, shift, upcast=False)  # noqa: E731
    else:
        kwargs = {"out": torch.empty_like(x)} if backend == "cpp out=" else {}
        fn = lambda: LN.modulated_layer_norm(x, cu, scale, shift, validate=False, **kwargs)  # noqa: E731
    _bench_case(benchmark, backend, fn)


def _copy_params():
    try:
        import pytest
    except ImportError:
        return lambda f: f
    return pytest.mark.parametrize("kind", ["copy_", "clone"])


@_copy_params()
def test_bench_copy_ceiling(benchmark, kind):
    src = torch.empty(100_000 * 8 * 128, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    benchmark.pedantic((lambda: dst.copy_(src)) if kind == "copy_" else src.clone, rounds=5, warmup_rounds=1)


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
