"""Ahead-of-time compile of every Triton kernel for real GPU targets (sm90, sm80), on this CPU-only machine.

The kernel tests here run in the Triton interpreter, which accepts code that compiled Triton rejects (last
session: a non-constexpr module global in the RoPE pack kernel passed every interpreter test and failed to
compile on the H100). benchmarks/aot_compile.py compiles, through Triton's real compiler down to a cubin,
every kernel specialisation the ops launch; it needs a process where triton was imported without
TRITON_INTERPRET (this one has it), so it runs in subprocesses, two shards in parallel.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "aot_compile.py"
SHARDS = 2


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def aot_reports(tmp_path_factory):
    """The default case set for sm90 and sm80, compiled by SHARDS parallel processes. Skips (with the reason)
    only where this triton build cannot compile for a CUDA target (the script exits 3)."""
    folder = tmp_path_factory.mktemp("aot")
    procs = []
    for shard in range(SHARDS):
        out = folder / f"shard{shard}.json"
        cmd = [sys.executable, str(SCRIPT), "--arch", "90", "80", "--shard", f"{shard}/{SHARDS}", "--json", str(out)]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True), out))
    results = []
    for proc, out in procs:
        log, _ = proc.communicate(timeout=900)
        assert out.exists(), f"aot_compile.py wrote no report (exit {proc.returncode}):\n{log[-6000:]}"
        summary = json.loads(out.read_text())
        if proc.returncode == 3:
            pytest.skip("this triton build cannot compile for a CUDA target here: " + summary["unavailable"])
        results.append((proc.returncode, log, summary))
    return results


@pytest.fixture(scope="module")
def aot_available(aot_reports):
    return True


def test_every_kernel_specialisation_compiles_to_cubin(aot_reports):
    problems = [p for _, _, summary in aot_reports for p in summary["problems"]]
    logs = "\n".join(log[-3000:] for _, log, _ in aot_reports)
    assert not problems, "kernels that do not compile for a real GPU target:\n" + "\n".join(problems) + "\n" + logs
    assert all(rc == 0 for rc, _, _ in aot_reports), logs
    cases = [c for _, _, s in aot_reports for r in s["reports"] for c in r["cases"]]
    assert cases and all(c["ok"] for c in cases)
    for _, _, summary in aot_reports:
        for report in summary["reports"]:
            for record in report["kernels"]:
                assert record["stages"] == ["ttir", "ttgir", "llir", "ptx", "cubin"], record


def _records(aot_reports, arch):
    return [k for _, _, s in aot_reports for r in s["reports"] if r["arch"] == arch for k in r["kernels"]]


@pytest.mark.parametrize("arch", [90, 80])
def test_every_launched_kernel_and_autotune_config_is_covered(aot_reports, arch):
    records = _records(aot_reports, arch)
    entry = aot_reports[0][2]["entry_kernels"]
    # the five launched kernels today; a new kernel without a compile case fails here
    assert {"_varlen_attention_fwd_kernel", "_pack_kernel", "_unpack_kernel", "_modulated_layer_norm_kernel",
            "_resample_renoise_kernel"} <= set(entry)
    assert set(entry) <= {r["kernel"] for r in records}
    attention = [r for r in records if r["kernel"] == "_varlen_attention_fwd_kernel"]
    compiled = {(r["constexprs"]["BLOCK_M"], r["constexprs"]["BLOCK_N"], r["num_warps"], r["num_stages"],
                 bool(r["constexprs"]["USE_TMA"])) for r in attention}
    space = {tuple(c) for c in aot_reports[0][2]["attention_config_space"]}
    expected = {c for c in space if arch >= 90 or not c[4]}  # TMA descriptors need sm90
    assert expected - compiled == set(), f"autotune configs never compiled for sm{arch}: {expected - compiled}"
    head_dims = {r["constexprs"]["HEAD_DIM"] for r in attention}
    assert {64, 96, 128, 256} <= head_dims
    dtypes = {t for r in attention for t in r["pointer_types"]}
    assert {"*bf16", "*fp16"} <= dtypes and (arch < 90 or "*fp32" in dtypes)
    resample = {(r["constexprs"]["SMOOTHING"], r["constexprs"]["TOKENS"]) for r in records
                if r["kernel"] == "_resample_renoise_kernel"}
    assert (0, False) in resample and (0, True) in resample and (arch < 90 or {(1, True), (2, False)} <= resample)
    rope = [r for r in records if r["kernel"] == "_pack_kernel" and r["constexprs"].get("APPLY_ROPE")]
    assert rope, "the fused RoPE pack was not compiled"


BAD_MODULE = '''
import torch
import triton
import triton.language as tl

SCALE = {scale}


@triton.jit
def _scale_kernel(X, Out, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(Out + offs, tl.load(X + offs, mask=mask) * SCALE, mask=mask)


def launch():
    x = torch.zeros(64)
    _scale_kernel[(1,)](x, torch.empty_like(x), 64, BLOCK=64)
'''


@pytest.mark.parametrize("scale, compiles", [("2.0", False), ("tl.constexpr(2.0)", True)])
def test_harness_catches_a_non_constexpr_global(aot_available, tmp_path, scale, compiles):
    """The bug class of last session (the interpreter accepts a plain float global, compiled Triton does not):
    the harness must fail on it, and pass the same kernel once the global is a constexpr."""
    module = tmp_path / "scale_kernel.py"
    module.write_text(textwrap.dedent(BAD_MODULE.format(scale=scale)))
    result = _run(["--module", str(module), "--kernel", "launch", "--arch", "90"], timeout=300)
    if compiles:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "1 kernel specialisations compiled" in result.stdout
    else:
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
        assert "SCALE" in result.stdout and "global" in result.stdout.lower(), result.stdout[-3000:]


SMALL_DOT_MODULE = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _small_dot_kernel(A, Out, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(A + offs[:, None] * BLOCK + offs[None, :])
    tl.store(Out + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, a))


def launch():
    a = torch.zeros(8, 8, dtype=torch.float16)
    _small_dot_kernel[(1,)](a, torch.empty(8, 8, dtype=torch.float32), BLOCK=8)
'''


def test_harness_catches_a_dot_block_under_16(aot_available, tmp_path):
    """The interpreter runs `tl.dot` on 8×8 blocks; a GPU compile rejects them."""
    module = tmp_path / "small_dot.py"
    module.write_text(textwrap.dedent(SMALL_DOT_MODULE))
    result = _run(["--module", str(module), "--kernel", "launch", "--arch", "90"], timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FAIL" in result.stdout
