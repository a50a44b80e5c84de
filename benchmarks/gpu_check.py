#!/usr/bin/env python3
"""`make gpu-check`: the GPU checks and benchmarks of DESIGN.md §7, in one script.

1. Says what this host has (GPU, torch, triton, diffusers, flash-attn) and exactly what is missing.
   A GPU host may be offline with an older torch/triton and no diffusers: `--wheels DIR` installs the
   wheels found there (no index, no dependencies) into a private folder first.
2. Runs the kernel tests on CUDA (bf16 included): pytest on the kernel test files with DVG_TEST_GPU=1.
3. Runs the kernel and end-to-end benchmarks (each `benchmarks/bench_*.py` exposes `run(device, quick)`)
   and appends one section to the results file (default benchmarks/RESULTS.md) with card, date, commit.

Without a CUDA GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The op tests run their Triton cases on CUDA (bf16 included) when DVG_TEST_GPU=1 and a GPU is present;
# the sampling/demand tests add their CUDA-vs-CPU checks.
GPU_TESTS = ["tests/test_varlen_attention.py", "tests/test_pack.py", "tests/test_modulated_layer_norm.py",
             "tests/test_resample_renoise.py", "tests/test_sampling.py", "tests/test_parity_sampling.py",
             "tests/test_demands.py", "tests/test_parity_demands.py", "tests/test_engine_cuda.py",
             "tests/test_packed_step.py"]
BENCHES = ["bench_attention", "bench_pack_ln", "bench_resample", "bench_e2e"]


def _install_wheels(folder: str) -> str:
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        raise SystemExit(f"gpu-check: --wheels {folder!r} holds no .whl files")
    target = os.path.join(tempfile.gettempdir(), "dvg-gpu-check-site")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
           "--target", target, *wheels]
    subprocess.run(cmd, check=True)
    sys.path.insert(0, target)
    os.environ["PYTHONPATH"] = os.pathsep.join([target, ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    print(f"gpu-check: installed {len(wheels)} wheel(s) from {folder} into {target}")
    return target


def _version(name: str):
    try:
        module = importlib.import_module(name)
        return getattr(module, "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - report any import failure as missing
        return None if isinstance(exc, ImportError) else f"broken ({type(exc).__name__}: {exc})"


def environment() -> dict:
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "triton": _version("triton"), "diffusers": _version("diffusers"), "transformers": _version("transformers"),
           "flash_attn": _version("flash_attn"), "pytest": _version("pytest")}
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - a copied tree without .git
        env["commit"] = os.environ.get("DVG_COMMIT", "unknown")
    return env


def missing(env: dict) -> list:
    needs = []
    if env["triton"] is None:
        needs.append("triton (all Triton kernels; tests and kernel benchmarks cannot run)")
    if env["pytest"] is None:
        needs.append("pytest (the GPU kernel tests)")
    if env["diffusers"] is None:
        needs.append("diffusers>=0.35 (the full-size HunyuanVideo transformer benchmark; pass --wheels with its wheel)")
    return needs


def run_tests(extra: list) -> int:
    env = dict(os.environ, DVG_TEST_GPU="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    files = [f for f in GPU_TESTS if os.path.exists(os.path.join(ROOT, f))]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files, *extra]
    print("gpu-check: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), the ceiling for memory-bound ops."""
    import torch
    from triton.testing import do_bench
    x = torch.empty(512 * 1024 * 1024 // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x))
    return 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9


def run_benchmarks(quick: bool, partial_json=None, only=None) -> list:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    sections = [{"bench": "device_copy", "rows": [{"what": "torch copy_ bf16 512 MiB", "GB/s": round(copy_bandwidth(), 1)}]}]
    for name in BENCHES:
        if only and name not in only:
            continue
        if not os.path.exists(os.path.join(ROOT, "benchmarks", name + ".py")):
            sections.append({"bench": name, "error": "benchmark module not present"})
            continue
        t0 = time.time()
        try:
            module = importlib.import_module(name)
            rows = module.run(device="cuda", quick=quick)
            sections.append({"bench": name, "rows": rows, "seconds": round(time.time() - t0, 1)})
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
            sections.append({"bench": name, "error": f"{type(exc).__name__}: {exc}"})
        print(f"gpu-check: {name}: {json.dumps(sections[-1], default=str)[:2000]}", flush=True)
        if partial_json:  # a run cut short by a time limit still leaves what it measured
            with open(partial_json, "w", encoding="utf-8") as fh:
                json.dump(sections, fh, indent=1, default=str)
    return sections


def markdown(env: dict, sections: list, test_rc) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"## GPU check — {env['gpu']} — {date} — commit {env['commit']}", "",
           f"torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, diffusers {env['diffusers']}, "
           f"flash-attn {env['flash_attn'] or 'not installed'}.", "",
           f"Kernel tests on CUDA: {'passed' if test_rc == 0 else ('not run' if test_rc is None else f'FAILED (pytest exit {test_rc})')}.", ""]
    for sec in sections:
        out.append(f"### {sec['bench']}")
        if "error" in sec:
            out += [f"not measured: {sec['error']}", ""]
            continue
        rows = sec["rows"] or []
        keys = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        if keys:
            out.append("| " + " | ".join(keys) + " |")
            out.append("|" + "---|" * len(keys))
            for row in rows:
                out.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", help="folder of wheels to install first (offline GPU hosts)")
    parser.add_argument("--quick", action="store_true", help="fewer shapes, shorter benchmarks")
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"),
                        help="markdown file to append the results section to")
    parser.add_argument("--json", help="also write the raw results as JSON here")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--only", nargs="*", help=f"benchmarks to run (default all: {' '.join(BENCHES)})")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = parser.parse_args(argv)
    if args.wheels:
        _install_wheels(args.wheels)
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not installed; nothing to check")
        return 0
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU found; nothing to check (the CPU tests are `make test`)")
        return 0
    env = environment()
    print("gpu-check: " + json.dumps(env))
    needs = missing(env)
    for need in needs:
        print(f"gpu-check: MISSING {need}")
    if env["triton"] is None:
        return 1
    test_rc = None if args.skip_tests else run_tests(args.pytest_args)
    sections = [] if args.skip_bench else run_benchmarks(args.quick, args.json, args.only)
    text = markdown(env, sections, test_rc)
    print(text)
    if not args.skip_bench:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
        print(f"gpu-check: appended results to {args.results}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"env": env, "tests_rc": test_rc, "sections": sections}, fh, indent=1, default=str)
    return 0 if test_rc in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
