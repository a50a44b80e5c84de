#!/usr/bin/env python3
"""`make gpu-check`: the GPU checks and benchmarks of DESIGN.md §7, in one script.

1. Says what this host has (GPU, torch, triton, diffusers, flash-attn) and exactly what is missing.
   A GPU host may be offline with an older torch/triton and no diffusers: `--wheels DIR` installs the
   wheels found there (no index, no dependencies) into a private folder first.
2. Runs the kernel tests on CUDA (bf16 included): pytest on the kernel test files with DVG_TEST_GPU=1.
3. Runs the kernel and end-to-end benchmarks (each `benchmarks/bench_*.py` exposes `run(device, quick)`)
   and appends one section to the results file (default benchmarks/RESULTS.md) with card, date, commit.

Without a CUDA GPU it says so and exits 0.

It prints a time estimate first. A lent GPU allows 600 s per command, so a session runs the tests first and
then each benchmark in its own call (`--plan` prints that sequence with the estimates):

    python benchmarks/gpu_check.py --skip-bench --json $OUT/tests.json --results $OUT/results.md
    python benchmarks/gpu_check.py --skip-tests --only bench_attention --quick --json $OUT/attention.json ...
    python benchmarks/gpu_check.py --skip-tests --only bench_e2e --quick --bench-budget-s 400 ...

`--json` is rewritten after the tests and after every benchmark (benchmarks that accept `partial_path` also
write `<json>.<bench>.partial.json` as they go, and log their partial rows), so a call cut short still
leaves what it measured; `--bench-budget-s` is handed to benchmarks that take a wall-clock budget.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import importlib
import inspect
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
# Entries may be pytest node ids (file::test) to take only the CUDA tests of a mostly-CPU file.
GPU_TESTS = ["tests/test_varlen_attention.py", "tests/test_pack.py", "tests/test_pack_out.py",
             "tests/test_modulated_layer_norm.py", "tests/test_resample_renoise.py", "tests/test_sampling.py",
             "tests/test_parity_sampling.py", "tests/test_demands.py", "tests/test_parity_demands.py",
             "tests/test_engine_cuda.py", "tests/test_packed_step.py", "tests/test_engine_transitions.py",
             "tests/test_i2v_cuda.py",
             "tests/test_engine_compat.py::test_compile_blocks_once_per_stage_shape_cuda",
             "tests/test_engine_compat.py::test_model_cpu_offload_cuda",
             "tests/test_engine_compile_packed.py::test_packed_forward_compiled_inductor_cuda",
             "tests/test_engine_compile_lengths.py::test_new_prompt_lengths_compile_nothing_inductor_cuda"]
BENCHES = ["bench_attention", "bench_pack_ln", "bench_resample", "bench_e2e"]
# --plan splits the GPU tests over two device calls: the kernels, then the sampling / demand / engine tests.
TEST_GROUPS = {
    "kernels": ["test_varlen_attention.py", "test_pack.py", "test_pack_out.py", "test_modulated_layer_norm.py",
                "test_resample_renoise.py", "test_packed_step.py"],
    "engine": ["test_sampling.py", "test_parity_sampling.py", "test_demands.py", "test_parity_demands.py",
               "test_engine_cuda.py", "test_engine_transitions.py", "test_i2v_cuda.py", "test_engine_compat.py",
               "test_engine_compile_packed.py", "test_engine_compile_lengths.py"],
}
# Rough wall seconds on an H100 (interpreter start-up, Triton compile and autotune included), for the estimate
# printed before running and for --plan. Last session: all kernel tests + 3 kernel benches fitted one 600 s
# call; bench_e2e quick did not (its old version had no budget). Refine these after a measured run.
ESTIMATE_S = {"tests": 240, "bench_attention": 150, "bench_pack_ln": 45, "bench_resample": 45,
              "bench_e2e": 240, "bench_e2e_full": 480}
CALL_LIMIT_S = 600


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


def select_tests(names) -> list:
    """GPU_TESTS entries of the named files (e.g. "test_pack.py"); a file listed by node ids gives all of them."""
    by_file = {}
    for entry in GPU_TESTS:
        by_file.setdefault(os.path.basename(entry.split("::")[0]), []).append(entry)
    unknown = [name for name in names if name not in by_file]
    if unknown:
        raise ValueError(f"--tests {unknown} is not a GPU test file; allowed: {', '.join(by_file)}")
    return [entry for name in names for entry in by_file[name]]


def run_tests(extra: list, files=None) -> int:
    env = dict(os.environ, DVG_TEST_GPU="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    files = [f for f in (files or GPU_TESTS) if os.path.exists(os.path.join(ROOT, f.split("::")[0]))]
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


def _accepted_kwargs(fn, **candidates) -> dict:
    """The candidates `fn` takes by name (benchmarks differ in what they accept beyond (device, quick))."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in candidates.items() if k in params and v is not None}


def _write_json(path, payload) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1, default=str)
    os.replace(tmp, path)  # never half a file, even if the call is killed mid-write


def run_benchmarks(quick: bool, partial_json=None, only=None, *, device: str = "cuda", bench_dir=None,
                   budget_s=None, payload=None) -> list:
    """Run the benchmark modules in BENCHES order (`only`: a subset), each isolated: one that raises is recorded
    with its error and the next still runs. After each, the sections so far are written to `partial_json`
    (inside `payload`, e.g. the environment and the test result). Benchmarks whose run() accepts them get
    `budget_s` and `partial_path` (= `<partial_json>.<name>.partial.json`)."""
    bench_dir = bench_dir or os.path.join(ROOT, "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    sections = []
    if str(device).startswith("cuda"):
        sections.append({"bench": "device_copy",
                         "rows": [{"what": "torch copy_ bf16 512 MiB", "GB/s": round(copy_bandwidth(), 1)}]})
    for name in BENCHES:
        if only and name not in only:
            continue
        if not os.path.exists(os.path.join(bench_dir, name + ".py")):
            sections.append({"bench": name, "error": "benchmark module not present"})
            continue
        t0 = time.time()
        print(f"gpu-check: {_stamp()} {name}: starting (estimate ~{_estimate(name, quick)} s)", flush=True)
        try:
            module = importlib.import_module(name)
            extra = _accepted_kwargs(module.run, budget_s=budget_s,
                                     partial_path=f"{partial_json}.{name}.partial.json" if partial_json else None)
            rows = module.run(device=device, quick=quick, **extra)
            sections.append({"bench": name, "rows": rows, "seconds": round(time.time() - t0, 1)})
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
            sections.append({"bench": name, "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.time() - t0, 1)})
        print(f"gpu-check: {_stamp()} {name}: {json.dumps(sections[-1], default=str)[:2000]}", flush=True)
        _write_json(partial_json, dict(payload or {}, sections=sections, complete=False))
    return sections


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S UTC")


def _estimate(name: str, quick: bool) -> int:
    if name == "bench_e2e" and not quick:
        return ESTIMATE_S["bench_e2e_full"]
    return ESTIMATE_S.get(name, 60)


def estimate_lines(run_tests: bool, benches, quick: bool) -> list:
    """The estimate printed before running: per item, the total, and whether it fits one device call."""
    items = ([("tests", ESTIMATE_S["tests"])] if run_tests else []) + [(b, _estimate(b, quick)) for b in benches]
    total = sum(s for _, s in items)
    lines = ["gpu-check: estimate (rough, H100): " + ", ".join(f"{n} ~{s} s" for n, s in items)
             + f"; total ~{total} s"]
    if total > CALL_LIMIT_S * 0.9:
        lines.append(f"gpu-check: that is over one {CALL_LIMIT_S} s device call: run the parts separately "
                     f"(`--plan` prints the sequence)")
    return lines


def plan_commands(quick: bool = True, out: str = "$OUT") -> list:
    """One command per device call, tests first, each estimated under CALL_LIMIT_S."""
    base = "PYTHONPATH=. python benchmarks/gpu_check.py --wheels .whl"
    results = f"--results {out}/results.md"
    lines = [f"# one device call per line ({CALL_LIMIT_S} s each); --wheels only where the host lacks diffusers & co; "
             "the parity tests need DVG_PARITY_DIR=<the parity folder carried into the tree>"]
    for group, files in TEST_GROUPS.items():
        lines.append(f"DVG_PARITY_DIR=shared/parity {base} --skip-bench --tests {' '.join(files)} "
                     f"--json {out}/tests_{group}.json {results}   # ~{ESTIMATE_S['tests'] // len(TEST_GROUPS)} s")
    for name in BENCHES:
        extra = " --bench-budget-s 400" if name == "bench_e2e" else ""
        lines.append(f"{base} --skip-tests --only {name}{' --quick' if quick else ''}{extra} --json {out}/{name}.json "
                     f"{results}   # ~{_estimate(name, quick)} s")
    return lines


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
    parser.add_argument("--json", help="also write the raw results as JSON here (rewritten after each part)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--only", nargs="*", help=f"benchmarks to run (default all: {' '.join(BENCHES)})")
    parser.add_argument("--tests", nargs="*", metavar="FILE",
                        help="only these GPU test files (names like test_pack.py; default: all of " +
                             " ".join(sorted({os.path.basename(f.split('::')[0]) for f in GPU_TESTS})) + ")")
    parser.add_argument("--bench-budget-s", type=float, default=None,
                        help="wall-clock budget handed to benchmarks that take one (bench_e2e: default 400)")
    parser.add_argument("--plan", action="store_true",
                        help=f"print the sequence of commands for {CALL_LIMIT_S} s device calls and exit")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = parser.parse_args(argv)
    if args.only:
        unknown = [name for name in args.only if name not in BENCHES]
        if unknown:
            parser.error(f"--only {unknown} is not a benchmark; allowed: {', '.join(BENCHES)}")
    if args.tests:
        try:
            select_tests(args.tests)
        except ValueError as exc:
            parser.error(str(exc))
    if args.plan:
        print("\n".join(plan_commands(args.quick)))
        return 0
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
    benches = [] if args.skip_bench else [b for b in BENCHES if not args.only or b in args.only]
    for line in estimate_lines(not args.skip_tests, benches, args.quick):
        print(line, flush=True)
    payload = {"env": env, "tests_rc": None, "sections": [], "complete": False}
    test_rc = None
    if not args.skip_tests:
        files = select_tests(args.tests) if args.tests else None
        test_rc = run_tests(args.pytest_args, files)
        payload["tests_rc"] = test_rc
        print(f"gpu-check: {_stamp()} tests finished: pytest exit {test_rc}", flush=True)
        _write_json(args.json, payload)
    sections = [] if args.skip_bench else run_benchmarks(args.quick, args.json, benches, budget_s=args.bench_budget_s,
                                                         payload=payload)
    text = markdown(env, sections, test_rc)
    print(text)
    if sections or test_rc is not None:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
        print(f"gpu-check: appended results to {args.results}")
    _write_json(args.json, dict(payload, sections=sections, complete=True))
    return 0 if test_rc in (None, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
