"""Benchmark of dvg::resample_renoise at HunyuanVideo 720p stage shapes.

The transitions of a 720×1280×121f plan (dvg-spec §7.4 worked example, S = M = 0.3): latent stages
[12,44,80] → [18,72,128] → [18,90,160] → [31,90,160], C = 16, B = 1; the 0→1 transition smooths.

CPU (`python benchmarks/bench_resample.py`, or `pytest benchmarks/bench_resample.py` with
pytest-benchmark): the C++ kernel against the torch reference with upcast=False (the unchanged
functions of dvg_engine.sampling), both float32 in and out, with a plain memory copy of the same
bytes (source read + output written) as the ceiling. Target: C++ ≥ 3× the reference.

GPU (`--device cuda`): the Triton kernel (bf16 output, the pipeline's dtype; fp32 output too) timed with
triton.testing.do_bench (median), reported as GB/s (source + output bytes) and output elements/s next
to the measured device copy bandwidth, plus the torch reference on the GPU. The op is compute-bound
where fp64 is slow: each element costs two 64-bit hash mixes and an fp64 log, sqrt and cos.

`--check` (GPU): correctness of the Triton kernel on CUDA against the torch reference (fp32, fp16,
bf16 outputs, both layouts, smoothing modes) and against the parity vectors; prints PASS/FAIL lines
and exits non-zero on a failure.

`run(device, quick)` returns the result rows (dicts) for `dvg bench` / gpu_check.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
from typing import Callable, Dict, List, Optional

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from _timing import wall_times  # noqa: E402
from dvg_engine import sampling  # noqa: E402
from dvg_engine.ops import _registry  # noqa: E402
from dvg_engine.ops import resample as R  # noqa: E402

CHANNELS = 16
HV720_STAGES = [(12, 44, 80), (18, 72, 128), (18, 90, 160), (31, 90, 160)]
QUICK_STAGES = [(4, 12, 20), (6, 18, 32), (6, 24, 40), (9, 24, 40)]


def _axes_chain(stages) -> List[List[List[int]]]:
    """Nested axes of every stage (dvg-spec §8) for a chain of latent stage shapes."""
    final = stages[-1]
    per_dim = []
    for d in range(3):
        axes = [list(range(final[d]))]
        for k in range(len(stages) - 2, -1, -1):
            axes.insert(0, _subset(axes[0], stages[k][d]))
        per_dim.append(axes)
    return [[per_dim[d][k] for d in range(3)] for k in range(len(stages))]


def _subset(parent: List[int], size: int) -> List[int]:
    length = len(parent)
    if size == length:
        return list(parent)
    if size == 1:
        return [parent[0]]
    pos = [round(i * (length - 1) / (size - 1)) for i in range(size)]
    pos[0], pos[-1] = 0, length - 1
    for i in range(1, size):
        pos[i] = min(max(pos[i], pos[i - 1] + 1), (length - 1) - (size - 1 - i))
    return [parent[p] for p in pos]


def transitions(quick: bool = False):
    """[(name, src_axes, dst_axes, smoothing)] for the three transitions of the benchmark plan."""
    stages = QUICK_STAGES if quick else HV720_STAGES
    axes = _axes_chain(stages)
    return [(f"{k}->{k + 1} {list(stages[k])}->{list(stages[k + 1])}", axes[k], axes[k + 1], 1 if k == 0 else 0)
            for k in range(3)]


def _median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return statistics.median(wall_times(fn, repeats, warmup))


def _copy_ceiling(n_bytes: int, repeats: int) -> float:
    """Best time of a plain copy that reads and writes n_bytes in total (the memory-bound ceiling)."""
    src = torch.randn(max(1, n_bytes // 8))
    dst = torch.empty_like(src)
    return min(wall_times(lambda: dst.copy_(src), repeats, warmup=2))


def _case_inputs(src_axes, dst_axes, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, CHANNELS, *(len(a) for a in src_axes), generator=gen).to(device=device, dtype=dtype)
    tensors = R.transition_tensors(src_axes, dst_axes, device)
    seeds = torch.tensor([sampling.REFERENCE_NOISE_SEED], dtype=torch.int64, device=device)
    return x0, tensors, seeds


def run_cpu(quick: bool = False) -> List[Dict[str, object]]:
    rows = []
    repeats = 3 if quick else 5
    for name, src, dst, smoothing in transitions(quick):
        x0, tensors, seeds = _case_inputs(src, dst, "cpu")
        out_elems = CHANNELS * len(dst[0]) * len(dst[1]) * len(dst[2])
        moved = x0.numel() * 4 + out_elems * 4

        def reference():
            return R.resample_renoise_ref(x0, **tensors, seeds=seeds, sigma=0.9, smoothing=smoothing, upcast=False)

        def cpp():
            with _registry.use_backend("cpp"):
                return R.resample_renoise(x0, **tensors, seeds=seeds, sigma=0.9, smoothing=smoothing, validate=False)

        t_ref = _median_time(reference, repeats)
        t_copy = _copy_ceiling(moved, repeats * 4)
        row = {"device": "cpu", "transition": name, "elements": out_elems, "bytes": moved,
               "torch_ref_ms": t_ref * 1e3, "copy_ms": t_copy * 1e3, "threads": torch.get_num_threads()}
        if R._cpp_kernel_available():
            t_cpp = _median_time(cpp, repeats)
            row.update(cpp_ms=t_cpp * 1e3, speedup_vs_torch=t_ref / t_cpp, cpp_gbps=moved / t_cpp / 1e9,
                       cpp_melem_s=out_elems / t_cpp / 1e6, copy_fraction=t_copy / t_cpp)
        else:
            row["cpp_ms"] = None
        rows.append(row)
    return rows


def run_gpu(quick: bool = False) -> List[Dict[str, object]]:
    import triton.testing
    device = torch.device("cuda")
    rows = []
    big = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    big_dst = torch.empty_like(big)
    t_big = triton.testing.do_bench(lambda: big_dst.copy_(big)) * 1e-3
    copy_gbps = 2 * big.numel() / t_big / 1e9
    for name, src, dst, smoothing in transitions(quick):
        x0, tensors, seeds = _case_inputs(src, dst, device)
        out_elems = CHANNELS * len(dst[0]) * len(dst[1]) * len(dst[2])
        for out_dtype in (torch.bfloat16, torch.float32):
            moved = x0.numel() * 4 + out_elems * out_dtype.itemsize

            def triton_op():
                with _registry.use_backend("triton"):
                    return R.resample_renoise(x0, **tensors, seeds=seeds, sigma=0.9, smoothing=smoothing,
                                              out_dtype=out_dtype, validate=False)

            def triton_tokens():
                with _registry.use_backend("triton"):
                    return R.resample_renoise(x0, **tensors, seeds=seeds, sigma=0.9, smoothing=smoothing,
                                              out_dtype=out_dtype, layout="tokens", patch=(1, 2, 2), validate=False)

            def reference():
                return R.resample_renoise_ref(x0, **tensors, seeds=seeds, sigma=0.9, smoothing=smoothing,
                                              out_dtype=out_dtype, upcast=False)

            t_tri = triton.testing.do_bench(triton_op) * 1e-3
            t_tok = triton.testing.do_bench(triton_tokens) * 1e-3
            t_ref = triton.testing.do_bench(reference) * 1e-3
            rows.append({"device": torch.cuda.get_device_name(), "transition": name, "out_dtype": str(out_dtype),
                         "elements": out_elems, "bytes": moved, "triton_us": t_tri * 1e6,
                         "triton_tokens_us": t_tok * 1e6, "torch_ref_us": t_ref * 1e6,
                         "triton_gbps": moved / t_tri / 1e9, "triton_gelem_s": out_elems / t_tri / 1e9,
                         "copy_gbps": copy_gbps, "fraction_of_copy_bw": moved / t_tri / 1e9 / copy_gbps,
                         "speedup_vs_torch": t_ref / t_tri})
    return rows


def run(device: str = "cpu", quick: bool = False) -> List[Dict[str, object]]:
    """Benchmark rows for `device` ("cpu" or "cuda")."""
    return run_gpu(quick) if str(device).startswith("cuda") else run_cpu(quick)


def check_gpu(parity_dir: Optional[str] = None, device: str = "cuda") -> bool:
    """Triton on CUDA vs the torch reference and the parity vectors; prints PASS/FAIL per check.
    (`device="cpu"` runs the same checks under TRITON_INTERPRET=1, to test this function itself.)"""
    import numpy as np
    device = torch.device(device)
    ok = True
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

    def report(name, passed, detail=""):
        nonlocal ok
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'} resample_renoise {name} {detail}")

    for name, src, dst, smoothing in transitions(quick=True):
        x0, tensors, _ = _case_inputs(src, dst, device)
        seeds = torch.tensor([12345], device=device)
        for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
            for layout, patch in (("bcthw", (1, 1, 1)), ("tokens", (1, 2, 2))):
                for smooth in sorted({smoothing, 2}):
                    with _registry.use_backend("triton"):
                        got = R.resample_renoise(x0, **tensors, seeds=seeds, sigma=0.9, smoothing=smooth,
                                                 out_dtype=out_dtype, layout=layout, patch=patch)
                    ref = R.resample_renoise_ref(x0.cpu(), **{k: v.cpu() for k, v in tensors.items()},
                                                 seeds=seeds.cpu(), sigma=0.9, smoothing=smooth, out_dtype=out_dtype,
                                                 layout=layout, patch=patch)
                    err = (got.cpu().double() - ref.double()).abs()
                    bound = tol[out_dtype] * (1 + ref.double().abs())
                    report(f"{name} {out_dtype} {layout} smoothing={smooth}", bool((err <= bound).all()),
                           f"max abs err {float(err.max()):.3g}, bit-identical {float((err == 0).double().mean()):.4f}")
    # noise: σ = 1 gives the field itself; count float32 ulps against the CPU reference
    axes = [[0, 7, 30], list(range(0, 90, 3)), list(range(0, 160, 2))]
    x0 = torch.zeros(1, CHANNELS, *(len(a) for a in axes), device=device)
    with _registry.use_backend("triton"):
        got = R.resample_renoise(x0, **R.transition_tensors(axes, axes, device),
                                 seeds=torch.tensor([12345], device=device), sigma=1.0).cpu()
    field = sampling.coordinate_noise(*axes, CHANNELS, 12345)
    ulps = ((got.view(torch.int32).long() - field.view(torch.int32).long()).abs())
    report("noise vs CPU field", int(ulps.max()) <= 1,
           f"max {int(ulps.max())} ulp, {int((ulps > 0).sum())} of {ulps.numel()} values differ")
    if parity_dir is not None and pathlib.Path(parity_dir, "transition.json").is_file():
        cases = json.loads(pathlib.Path(parity_dir, "transition.json").read_text())
        arrays = np.load(pathlib.Path(parity_dir, "transition.npz"))
        for case in cases:
            key = case["key"]
            x0 = sampling.x0_from_velocity(torch.from_numpy(arrays[f"{key}_latents"]),
                                           torch.from_numpy(arrays[f"{key}_velocity"]), case["x0_sigma"]).to(device)
            tensors = R.transition_tensors(case["stage_axes"][case["from_stage"]],
                                           case["stage_axes"][case["to_stage"]], device)
            with _registry.use_backend("triton"):
                got = R.resample_renoise(x0, **tensors, seeds=torch.full((x0.shape[0],), 12345, device=device),
                                         sigma=case["renoise_sigma"], smoothing=1 if case["to_stage"] == 1 else 0)
            err = float((got.cpu() - torch.from_numpy(arrays[f"{key}_new_latents"])).abs().max())
            report(f"parity transition {key}", err <= 2e-5, f"max abs err {err:.3g}")
    return ok


def _print_rows(rows: List[Dict[str, object]]) -> None:
    for row in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--check", action="store_true", help="GPU correctness checks (PASS/FAIL)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--parity-dir", default=os.environ.get("DVG_PARITY_DIR",
                                                               str(pathlib.Path(__file__).resolve().parents[2]
                                                                   / "shared" / "parity")))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.check or args.device == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device found: GPU benchmark/check skipped")
            return 0
    if args.check:
        return 0 if check_gpu(args.parity_dir) else 1
    _print_rows(run(args.device, args.quick))
    return 0


# pytest-benchmark entry points (`pytest benchmarks/bench_resample.py`): C++ vs the torch reference
# at each transition, plus the memory-copy ceiling of the same bytes.
try:
    import pytest

    _CASES = transitions(quick=os.environ.get("DVG_BENCH_QUICK", "0") == "1")

    @pytest.mark.parametrize("case", _CASES, ids=[c[0] for c in _CASES])
    @pytest.mark.parametrize("impl", ["torch_ref", "cpp", "copy"])
    def test_bench_resample_cpu(benchmark, case, impl):
        name, src, dst, smoothing = case
        x0, tensors, seeds = _case_inputs(src, dst, "cpu")
        benchmark.group = f"resample_renoise {name}"
        if impl == "torch_ref":
            benchmark(lambda: R.resample_renoise_ref(x0, **tensors, seeds=seeds, sigma=0.9, smoothing=smoothing,
                                                     upcast=False))
        elif impl == "cpp":
            if not R._cpp_kernel_available():
                pytest.skip("C++ kernel not built")
            with _registry.use_backend("cpp"):
                benchmark(lambda: R.resample_renoise(x0, **tensors, seeds=seeds, sigma=0.9, smoothing=smoothing,
                                                     validate=False))
        else:
            moved = x0.numel() * 4 + CHANNELS * len(dst[0]) * len(dst[1]) * len(dst[2]) * 4
            src_buf = torch.randn(moved // 8)
            dst_buf = torch.empty_like(src_buf)
            benchmark(lambda: dst_buf.copy_(src_buf))
except ImportError:  # pytest is only needed for the pytest-benchmark entry points
    pass


if __name__ == "__main__":
    sys.exit(main())
