"""Varlen attention benchmark (GPU): dvg Triton kernel vs torch SDPA backends and flash-attn.

Reports TFLOP/s with an explicit `flops()` (4 · Σ_b len_q(b) · len_k(b) · heads · head_dim: two matmuls of
2 flops per multiply-add; softmax not counted) and the median time of `triton.testing.do_bench`, at
HunyuanVideo shapes (24 heads × 128) on packed streams of 10k–120k tokens: two samples on different
DVG stage grids, each followed by its ~100–250 valid text tokens.

Providers (each skipped, with the reason, when it cannot run here):

* `dvg_triton`             the packed stream in one launch (autotuned).
* `sdpa_<backend>_loop`    one SDPA call per sequence, on (1, heads, len, dim) views of the packed stream
                           (what a packed path without a varlen kernel does); backend ∈ flash, cudnn, efficient.
* `sdpa_<backend>_nested`  SDPA on nested (jagged) tensors built on the packed stream: torch's own varlen
                           path; backend ∈ flash, efficient.
* `sdpa_<backend>_padded`  the batch padded to the longest sequence with a boolean key mask
                           (B, 1, 1, L), as diffusers' HunyuanVideo transformer calls SDPA.
* `flash_attn_varlen`      `flash_attn_varlen_func`, when flash-attn is installed.

Usage:
    python benchmarks/bench_attention.py            # full table (+ --json PATH to save the rows)
    python benchmarks/bench_attention.py --quick    # two shapes
    python benchmarks/bench_attention.py --check    # GPU correctness sweep, prints PASS / FAIL, exit 1 on FAIL
    python benchmarks/bench_attention.py --sweep    # every kernel config timed explicitly (for retuning)
    python benchmarks/bench_attention.py --aot 90   # no GPU: what each config compiles to on sm90

Works with torch ≥ 2.3 and triton ≥ 3.0 (the GPU host may be older than this repository's CPU env).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

HEADS, HEAD_DIM = 24, 128


def flops(lens_q: Sequence[int], lens_k: Sequence[int], heads: int, head_dim: int) -> float:
    """Forward attention flops: QKᵀ and PV, 2 flops per multiply-add each."""
    return 4.0 * sum(lq * lk for lq, lk in zip(lens_q, lens_k)) * heads * head_dim


def _grid_tokens(t: int, h: int, w: int) -> int:
    """Latent tokens of a stage grid (t, h, w) in latent units with HunyuanVideo's 1×2×2 patches."""
    return t * (h // 2) * (w // 2)


# Stage grids of 720p × 129 frames (latent 33 × 90 × 160); two samples of one batch on different plans.
CASES: List[Dict] = [
    {"name": "packed-15k  (stage 0: 9x46x80 + 13x34x60, text 200/150)",
     "lens": [_grid_tokens(9, 46, 80) + 200, _grid_tokens(13, 34, 60) + 150]},
    {"name": "packed-36k  (stage 1: 17x46x80 + 13x68x120, text 256/120)",
     "lens": [_grid_tokens(17, 46, 80) + 256, _grid_tokens(13, 68, 120) + 120]},
    {"name": "packed-75k  (stage 2: 25x68x120 + 17x90x160, text 180/230)",
     "lens": [_grid_tokens(25, 68, 120) + 180, _grid_tokens(17, 90, 160) + 230]},
    {"name": "single-119k (720p full grid 33x90x160, text 256)",
     "lens": [_grid_tokens(33, 90, 160) + 256]},
]
QUICK_CASES = [CASES[0], CASES[2]]

# A Triton attention benchmark on CPU would time the interpreter: `dvg bench` lists it as skipped there.
DEVICES = ("cuda",)


def _packed_inputs(lens: Sequence[int], dtype: torch.dtype, device: str, heads_kv: int = HEADS):
    from dvg_engine.ops.attention import cu_seqlens_from_lengths
    gen = torch.Generator(device=device).manual_seed(0)
    total = sum(lens)
    q = torch.randn(total, HEADS, HEAD_DIM, device=device, dtype=dtype, generator=gen)
    k = torch.randn(total, heads_kv, HEAD_DIM, device=device, dtype=dtype, generator=gen)
    v = torch.randn(total, heads_kv, HEAD_DIM, device=device, dtype=dtype, generator=gen)
    cu = cu_seqlens_from_lengths(list(lens), device)
    return q, k, v, cu


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend
    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def _providers(lens: Sequence[int], q, k, v, cu) -> Dict[str, Callable[[], Optional[Callable]]]:
    """name -> builder returning the zero-arg function to time (or raising with the reason it cannot run)."""
    from torch.nn.attention import sdpa_kernel
    from dvg_engine.ops import _registry
    from dvg_engine.ops.attention import varlen_attention
    max_len = max(lens)
    offsets = [0]
    for n in lens:
        offsets.append(offsets[-1] + n)
    providers: Dict[str, Callable] = {}

    def dvg():
        def fn():
            with _registry.use_backend("triton"):
                return varlen_attention(q, k, v, cu, cu, max_len, max_len, validate=False)
        return fn
    providers["dvg_triton"] = dvg

    segments = [(q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None], v[a:b].transpose(0, 1)[None])
                for a, b in zip(offsets[:-1], offsets[1:])]

    def loop(backend):
        def build():
            def fn():
                with sdpa_kernel(_sdpa_backend(backend)):
                    return [F.scaled_dot_product_attention(qs, ks, vs) for qs, ks, vs in segments]
            return fn
        return build

    def padded(backend):
        def build():
            batch = len(lens)
            qp = q.new_zeros(batch, max_len, HEADS, HEAD_DIM)
            kp = k.new_zeros(batch, max_len, k.shape[1], HEAD_DIM)
            vp = v.new_zeros(batch, max_len, v.shape[1], HEAD_DIM)
            mask = torch.zeros(batch, max_len, dtype=torch.bool, device=q.device)
            for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
                qp[i, :b - a], kp[i, :b - a], vp[i, :b - a] = q[a:b], k[a:b], v[a:b]
                mask[i, :b - a] = True
            mask = mask[:, None, None, :]  # (B, 1, 1, L) key mask, as diffusers' HunyuanVideo builds it
            qt, kt, vt = qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2)

            def fn():
                with sdpa_kernel(_sdpa_backend(backend)):
                    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
            return fn
        return build

    def nested(backend):
        def build():
            offsets64 = cu.long()
            qn, kn, vn = (torch.nested.nested_tensor_from_jagged(t, offsets64).transpose(1, 2) for t in (q, k, v))

            def fn():
                with sdpa_kernel(_sdpa_backend(backend)):
                    return F.scaled_dot_product_attention(qn, kn, vn)
            return fn
        return build

    for backend in ("flash", "cudnn", "efficient"):
        providers[f"sdpa_{backend}_loop"] = loop(backend)
    for backend in ("flash", "efficient"):  # torch's own packed path: nested (jagged) tensors
        providers[f"sdpa_{backend}_nested"] = nested(backend)
    for backend in ("cudnn", "efficient"):  # the flash backend takes no mask
        providers[f"sdpa_{backend}_padded"] = padded(backend)

    def flash_attn():
        from flash_attn import flash_attn_varlen_func  # optional: skipped when absent

        def fn():
            return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len)
        return fn
    providers["flash_attn_varlen"] = flash_attn
    return providers


def _time_ms(fn: Callable) -> float:
    import triton.testing
    fn()
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def run(device: str = "cuda", quick: bool = False, dtype: torch.dtype = torch.bfloat16,
        providers: Optional[Sequence[str]] = None) -> List[dict]:
    """Benchmark rows: one dict per (case, provider) with ms, tflops, ok / skipped reason, and for every
    case the ratio of dvg_triton to the fastest SDPA provider (`vs_best_sdpa`)."""
    if not torch.cuda.is_available() or not str(device).startswith("cuda"):
        raise RuntimeError(f"bench_attention.run(device={device!r}) needs a CUDA device; none is available")
    rows: List[dict] = []
    for case in (QUICK_CASES if quick else CASES):
        lens = case["lens"]
        q, k, v, cu = _packed_inputs(lens, dtype, device)
        case_flops = flops(lens, lens, HEADS, HEAD_DIM)
        case_rows = []
        for name, build in _providers(lens, q, k, v, cu).items():
            if providers is not None and name not in providers:
                continue
            row = {"case": case["name"], "provider": name, "total_tokens": sum(lens), "lens": list(lens),
                   "heads": HEADS, "head_dim": HEAD_DIM, "dtype": str(dtype).replace("torch.", ""),
                   "flops": case_flops}
            try:
                ms = _time_ms(build())
                row.update(ms=ms, tflops=case_flops / (ms * 1e-3) / 1e12, ok=True)
            except Exception as exc:  # a provider unavailable on this GPU / install is reported, not fatal
                row.update(ms=None, tflops=None, ok=False, skipped=f"{type(exc).__name__}: {str(exc)[:160]}")
            torch.cuda.empty_cache()
            case_rows.append(row)
        ours = next((r for r in case_rows if r["provider"] == "dvg_triton" and r["ok"]), None)
        if ours is not None:
            from dvg_engine.kernels.varlen_attention import best_config
            chosen = best_config(HEAD_DIM, dtype, False, max(lens), max(lens))
            ours["config"] = None if chosen is None else str(chosen)
        sdpa = [r for r in case_rows if r["ok"] and r["provider"].startswith("sdpa_")]
        ours = next((r for r in case_rows if r["provider"] == "dvg_triton" and r["ok"]), None)
        if ours is not None and sdpa:
            best = min(sdpa, key=lambda r: r["ms"])
            for r in case_rows:
                r["best_sdpa"] = best["provider"]
            ours["vs_best_sdpa"] = best["ms"] / ours["ms"]
            padded = [r for r in sdpa if r["provider"].endswith("_padded")]
            if padded:
                ours["vs_best_padded"] = min(r["ms"] for r in padded) / ours["ms"]
        rows.extend(case_rows)
        del q, k, v, cu
        torch.cuda.empty_cache()
    return rows


def sweep(device: str = "cuda", quick: bool = False, dtype: torch.dtype = torch.bfloat16) -> List[dict]:
    """Time every candidate configuration explicitly (no autotuning) on each case: the data for retuning
    `_CONFIG_SPACE` / `keep()` in kernels/varlen_attention.py."""
    from dvg_engine.kernels import varlen_attention as kernels
    rows = []
    for case in (QUICK_CASES if quick else CASES):
        lens = case["lens"]
        q, k, v, cu = _packed_inputs(lens, dtype, device)
        case_flops = flops(lens, lens, HEADS, HEAD_DIM)
        configs = kernels.candidate_configs(kernels.block_d_for(HEAD_DIM), q.element_size(),
                                            kernels.tma_supported(q, k, v))
        for config in configs:
            row = {"case": case["name"], "provider": f"config {config}", "total_tokens": sum(lens), "heads": HEADS,
                   "head_dim": HEAD_DIM, "dtype": str(dtype).replace("torch.", ""), "flops": case_flops}
            try:
                ms = _time_ms(lambda: kernels.varlen_attention_fwd(q, k, v, cu, cu, max(lens), max(lens),
                                                                   HEAD_DIM ** -0.5, False, config=config))
                row.update(ms=ms, tflops=case_flops / (ms * 1e-3) / 1e12, ok=True)
            except Exception as exc:
                row.update(ms=None, tflops=None, ok=False, skipped=f"{type(exc).__name__}: {str(exc)[:160]}")
            rows.append(row)
        del q, k, v, cu
        torch.cuda.empty_cache()
    return rows


def _print_table(rows: List[dict]) -> None:
    current = None
    for r in rows:
        if r["case"] != current:
            current = r["case"]
            print(f"\n{current}  [{r['total_tokens']} tokens, {r['heads']}x{r['head_dim']}, {r['dtype']}]")
        if r["ok"]:
            extra = ""
            if "vs_best_sdpa" in r:
                extra = f"   {r['vs_best_sdpa']:.2f}x the fastest SDPA ({r['best_sdpa']})"
                if "vs_best_padded" in r:
                    extra += f", {r['vs_best_padded']:.2f}x the padded-mask path"
            if r.get("config"):
                extra += f"   [{r['config']}]"
            print(f"  {r['provider']:<22} {r['ms']:9.3f} ms  {r['tflops']:7.1f} TFLOP/s{extra}")
        else:
            print(f"  {r['provider']:<22}   skipped: {r['skipped']}")


# ---------------------------------------------------------------------------------------------------
# --check: GPU correctness sweep
# ---------------------------------------------------------------------------------------------------

CHECK_SHAPES = [
    # (lens_q, lens_k, heads_q, heads_kv, head_dim)
    ([1, 17, 97, 129, 300], [1, 17, 97, 129, 300], 4, 4, 64),
    ([2160 + 120, 1080 + 256], [2160 + 120, 1080 + 256], 24, 24, 128),
    ([0, 500, 7], [300, 0, 1200], 8, 2, 128),
    ([333, 1000], [333, 1000], 4, 4, 96),
    ([257, 64], [257, 64], 2, 1, 256),
    ([4000], [4000], 24, 24, 128),
]


def check(device: str = "cuda", dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float16, torch.float32),
          shapes: Sequence = tuple(CHECK_SHAPES), sweep_dtype: Optional[torch.dtype] = torch.bfloat16) -> bool:
    """Run the kernel (autotuned, and every explicit config the autotuner may pick) against an fp64
    reference with the 2x rule; print PASS / FAIL per case. Returns True when everything passed.
    The config sweep runs at the 24-head × 128 shapes in `sweep_dtype` only (each compile costs seconds;
    None skips it)."""
    from dvg_engine.kernels import varlen_attention as kernels
    from dvg_engine.ops import _registry
    from dvg_engine.ops.attention import cu_seqlens_from_lengths, varlen_attention, varlen_attention_ref
    floor = {torch.float16: 1e-4, torch.bfloat16: 1e-3, torch.float32: 1e-6}
    failures = 0
    total = 0

    def report(label: str, ok: bool, detail: str) -> None:
        nonlocal failures, total
        total += 1
        failures += 0 if ok else 1
        print(f"{'PASS' if ok else 'FAIL'}  {label}  {detail}", flush=True)

    def compare(label, q, k, v, cu_q, cu_k, out, lse):
        ref64, lse64 = varlen_attention_ref(q.double(), k.double(), v.double(), cu_q, cu_k, return_lse=True)
        same = varlen_attention_ref(q, k, v, cu_q, cu_k, upcast=False)
        k_err = (out.double() - ref64).abs().max().item() if out.numel() else 0.0
        t_err = (same.double() - ref64).abs().max().item() if out.numel() else 0.0
        finite = torch.isfinite(lse64)
        lse_ok = torch.equal(torch.isneginf(lse), torch.isneginf(lse64)) and (
            not bool(finite.any()) or (lse.double()[finite] - lse64[finite]).abs().max().item() < 1e-3)
        ok = (k_err == k_err) and k_err <= 2 * t_err + floor[q.dtype] and lse_ok
        report(label, ok, f"max err {k_err:.3g} (torch same-dtype {t_err:.3g}), lse {'ok' if lse_ok else 'WRONG'}")

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    for dtype in dtypes:
        for lens_q, lens_k, hq, hk, d in shapes:
            if dtype == torch.float32 and sum(lens_q) > 1000:
                continue
            gen = torch.Generator(device=device).manual_seed(1)
            q = torch.randn(sum(lens_q), hq, d, device=device, dtype=dtype, generator=gen)
            k = torch.randn(sum(lens_k), hk, d, device=device, dtype=dtype, generator=gen)
            v = torch.randn(sum(lens_k), hk, d, device=device, dtype=dtype, generator=gen)
            cu_q, cu_k = cu_seqlens_from_lengths(lens_q, device), cu_seqlens_from_lengths(lens_k, device)
            label = f"{str(dtype)[6:]:<8} lens_q={lens_q} lens_k={lens_k} heads={hq}/{hk} d={d}"
            try:
                with _registry.use_backend("triton"):
                    out, lse = varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), return_lse=True)
                sync()
                compare("autotuned " + label, q, k, v, cu_q, cu_k, out, lse)
            except Exception as exc:
                report("autotuned " + label, False, f"raised {type(exc).__name__}: {exc}")
            if (hq, d) != (24, 128) or dtype != sweep_dtype:
                continue  # every config once, at the production shape and dtype (compiles cost seconds each)
            block_d = kernels.block_d_for(d)
            for config in kernels.candidate_configs(block_d, q.element_size(), kernels.tma_supported(q, k, v)):
                try:
                    out, lse = kernels.varlen_attention_fwd(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                                            1.0 / math.sqrt(d), True, config=config)
                    sync()
                    compare(f"{config} " + label, q, k, v, cu_q, cu_k, out, lse)
                except Exception as exc:
                    if type(exc).__name__ == "OutOfResources":  # the autotuner skips these the same way
                        print(f"SKIP  {config} {label}  does not fit this GPU: {exc}")
                        continue
                    report(f"{config} " + label, False, f"raised {type(exc).__name__}: {exc}")
    print(f"\n{'PASS' if failures == 0 else 'FAIL'}: {total - failures}/{total} checks passed")
    return failures == 0


# ---------------------------------------------------------------------------------------------------
# --aot: compile for a GPU target without a GPU
# ---------------------------------------------------------------------------------------------------

def aot_compile(arch: int, dtype: str, head_dim: int, config, return_lse: bool = False) -> dict:
    """Compile the kernel for CUDA sm<arch> through Triton's ahead-of-time path (no GPU needed; call with
    TRITON_INTERPRET unset in the process) and describe the result: shared memory bytes, whether the PTX
    uses Hopper warpgroup MMA / TMA bulk copies, and, where cuobjdump ships with Triton, the registers
    and spill stack per thread. dtype is Triton's name: 'bf16', 'fp16' or 'fp32'."""
    import shutil
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dvg_engine.kernels import varlen_attention as kernels
    fn = kernels._varlen_attention_fwd_kernel
    block_d = kernels.block_d_for(head_dim)
    ptr = "*" + dtype
    desc = f"tensordesc<{dtype}[{config.block_n}, {block_d}]>" if config.use_tma else ptr
    signature = {"Q": ptr, "K": ptr, "V": ptr, "K_desc": desc, "V_desc": desc, "Out": ptr,
                 "Lse": "*fp32" if return_lse else ptr, "CuSeqlensQ": "*i32", "CuSeqlensK": "*i32",
                 "qk_scale_log2": "fp32"}
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                      USE_TMA=config.use_tma, RETURN_LSE=return_lse,
                      DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
    for name in fn.arg_names:
        signature.setdefault(name, "constexpr" if name in constexprs else "i32")
    # 16-divisible pointers and strides, as the launcher specialises them on a real launch.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if signature[name].startswith("*") or name.startswith("stride")}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    ptx = compiled.asm["ptx"]
    info = {"shared": compiled.metadata.shared, "wgmma": "wgmma" in ptx, "tma": "cp.async.bulk.tensor" in ptx}
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    cuobjdump = cuobjdump if os.path.exists(cuobjdump) else shutil.which("cuobjdump")
    if cuobjdump and "cubin" in compiled.asm:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
            fh.write(compiled.asm["cubin"])
            fh.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", fh.name], capture_output=True, text=True).stdout
        for key, field in (("registers", "REG"), ("spill_stack", "STACK")):
            found = [int(x) for x in re.findall(rf"{field}:(\d+)", usage)]
            if found:
                info[key] = max(found)
    return info


def aot_report(arch: int, dtype: str = "bf16", head_dim: int = HEAD_DIM) -> None:
    """Print what every candidate config compiles to on sm<arch> (for tuning without a GPU)."""
    from dvg_engine.kernels import varlen_attention as kernels
    element_bytes = 4 if dtype == "fp32" else 2
    tma_ok = arch >= 90 and head_dim == kernels.block_d_for(head_dim)
    for config in kernels.candidate_configs(kernels.block_d_for(head_dim), element_bytes, tma_ok):
        try:
            info = aot_compile(arch, dtype, head_dim, config)
            print(f"sm{arch} {dtype} d={head_dim} {config}: " + " ".join(f"{k}={v}" for k, v in info.items()),
                  flush=True)
        except Exception as exc:
            print(f"sm{arch} {dtype} d={head_dim} {config}: FAILED {type(exc).__name__}: {str(exc)[:400]}",
                  flush=True)


def _environment() -> dict:
    import triton
    info = {"torch": torch.__version__, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    try:
        import subprocess
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:
        pass
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two shapes only")
    parser.add_argument("--check", action="store_true", help="GPU correctness sweep (PASS / FAIL), no timing")
    parser.add_argument("--sweep", action="store_true", help="time every candidate kernel config explicitly")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--json", default=None, help="write the rows and the environment to this file")
    parser.add_argument("--aot", type=int, default=None, metavar="ARCH",
                        help="no GPU needed: compile every candidate config for sm<ARCH> (e.g. 90) and print "
                             "shared memory, registers and spills (--dtype, --head-dim)")
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM)
    args = parser.parse_args(argv)
    if args.aot is not None:
        os.environ.pop("TRITON_INTERPRET", None)
        aot_report(args.aot, {"bfloat16": "bf16", "float16": "fp16"}[args.dtype], args.head_dim)
        return 0
    if not torch.cuda.is_available():
        print("bench_attention: no CUDA GPU found; nothing to run")
        return 0
    print(" ".join(f"{k}={v}" for k, v in _environment().items()))
    if args.check:
        return 0 if check() else 1
    dtype = getattr(torch, args.dtype)
    rows = sweep(quick=args.quick, dtype=dtype) if args.sweep else run(quick=args.quick, dtype=dtype)
    _print_table(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": _environment(), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
