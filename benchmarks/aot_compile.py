#!/usr/bin/env python3
"""Compile every Triton kernel specialisation the `dvg` ops launch for a real GPU target — no GPU needed.

The Triton interpreter (how the kernel tests run on a CPU machine) accepts code that compiled Triton
rejects: a plain (non-constexpr) module global read inside a kernel, a `tl.dot` block under 16, a tile
whose shared memory does not fit the card. Last session such a kernel passed every interpreter test and
then failed to compile on the H100. This script runs Triton's real compiler — frontend, TTIR, TTGIR, LLVM
IR, PTX and ptxas to a cubin — for `cuda` sm_90 (H100/H200) and sm_80 (A100) on this CPU-only machine.

How: the op wrappers (`dvg_engine.ops.*`, backend "triton") are called on small CPU tensors while
Triton's active driver is replaced by one that names the GPU target, and every `kernel[grid](...)`
launch becomes `kernel.warmup(...)` (compile, no launch). So the specialisations compiled are exactly
those a launch with these inputs would compile on the GPU: Triton's own binder derives the signature,
the 16-byte divisibility and the ==1 integer specialisations from the real arguments; the autotuned
attention compiles every config its prune keeps (each after its pre-hook, which sizes the TMA
descriptors), and the autotune configs no input reaches are compiled once through the launcher's
explicit-config path. A kernel launched with a fixed config must also fit the target's shared memory
(autotune configs that do not are only reported: the autotuner skips them at run time).

It relies on Triton internals (the active-driver hook, KernelInterface.__getitem__, JITFunction.warmup,
Autotuner.prune_configs), written against triton 3.9; where they are missing it says so and exits 3.

Must run in a process where triton was imported WITHOUT `TRITON_INTERPRET=1` (the test suite sets it,
so the test runs this script in a subprocess). Triton caches compiled kernels (TRITON_CACHE_DIR); a cache
hit is a kernel with the same source and options that compiled before.

Usage:
    python benchmarks/aot_compile.py                   # sm90 and sm80, the default cases; exit 1 on any failure
    python benchmarks/aot_compile.py --full --resources  # every variant, with registers / spills per kernel
    python benchmarks/aot_compile.py --arch 90 --shard 0/2 --json out.json
    python benchmarks/aot_compile.py --list            # the case names
    python benchmarks/aot_compile.py --module PATH.py --kernel NAME --arch 90
        # compile the launches of a file of yours with the harness: NAME is a zero-arg function in
        # that module that launches its kernel(s) (see tests/test_triton_compile.py)

Limits: compiles with the triton installed here (3.9 on the CPU machine), which may be newer than the
GPU host's (3.6 last session); frontend rules such as constexpr globals hold for both. Register
pressure and spills (from the bundled cuobjdump) are reported, not judged.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

if os.environ.get("TRITON_INTERPRET", "0") == "1" and "triton" not in sys.modules:
    # this script only makes sense with the real compiler: drop the interpreter before triton is imported
    os.environ.pop("TRITON_INTERPRET")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

# Max dynamic shared memory per block (bytes) by compute capability, from the CUDA programming guide.
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


class AOTUnavailable(RuntimeError):
    """This triton build cannot compile for a GPU target here (e.g. no NVIDIA backend, or it is interpreting)."""


# ---------------------------------------------------------------------------------------------------
# The harness: a driver that names the target, launches turned into compiles
# ---------------------------------------------------------------------------------------------------

class _TargetDriver:
    """Just enough of a Triton driver for JITFunction.run(warmup=True): the target, device 0, stream 0."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_benchmarker(self):
        raise AOTUnavailable("an autotuner tried to benchmark during an AOT compile; every launch should compile only")


def check_available() -> None:
    """Raise AOTUnavailable with the reason when this process cannot compile for a CUDA target."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise AOTUnavailable("TRITON_INTERPRET=1 is set: triton was imported in interpreter mode; run this script "
                             "in a fresh process without it")
    try:
        import triton  # noqa: F401
        from triton.backends import backends
        from triton.backends.compiler import GPUTarget  # noqa: F401  (the AOT target class must exist)
        from triton.runtime.jit import JITFunction
    except Exception as exc:  # noqa: BLE001 - any import problem means no AOT here
        raise AOTUnavailable(f"triton is not importable: {type(exc).__name__}: {exc}") from exc
    if "nvidia" not in backends:
        raise AOTUnavailable(f"this triton build has no NVIDIA backend (backends: {sorted(backends)})")
    if not hasattr(JITFunction, "warmup") or not hasattr(triton.runtime.driver, "set_active"):
        raise AOTUnavailable(f"triton {triton.__version__} lacks JITFunction.warmup / driver.set_active")


class CompileLog:
    """What one target compiled: one record per compiled kernel."""

    def __init__(self, arch: int):
        self.arch = arch
        self.records: List[dict] = []
        self.case: Optional[str] = None

    def add(self, kernel, name: str, config: Optional[str], autotuned: bool) -> None:
        meta = kernel.metadata
        stages = [s for s in ("ttir", "ttgir", "llir", "ptx", "cubin") if s in kernel.asm]
        constants, pointers = {}, set()
        src = getattr(kernel, "src", None)
        fn = getattr(src, "fn", None)
        if src is not None and fn is not None:
            for path, value in getattr(src, "constants", {}).items():
                if len(path) == 1 and path[0] < len(fn.arg_names) and fn.arg_names[path[0]].isupper():
                    constants[fn.arg_names[path[0]]] = value if isinstance(value, (int, float, str, bool)) else str(value)
            pointers = {t for t in getattr(src, "signature", {}).values() if isinstance(t, str) and t.startswith("*")}
        limit = SHARED_MEMORY_LIMIT.get(self.arch)
        self.records.append({
            "case": self.case, "kernel": name, "arch": self.arch, "constexprs": constants, "config": config,
            "pointer_types": sorted(pointers),
            "autotuned": autotuned, "num_warps": meta.num_warps, "num_stages": meta.num_stages,
            "shared": meta.shared, "fits_shared": limit is None or meta.shared <= limit, "stages": stages,
            "cubin": kernel.asm.get("cubin"),
        })


def _config_label(config) -> str:
    kw = ", ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{kw}, num_warps={config.num_warps}, num_stages={config.num_stages}"


@contextlib.contextmanager
def aot_target(arch: int) -> Iterator[CompileLog]:
    """Inside the block, Triton targets CUDA sm_<arch> and every `kernel[grid](...)` launch compiles instead of
    running; the block yields the CompileLog that collects the compiled kernels. The dvg op registry lets the
    "triton" backend take CPU tensors, and the attention launcher sees TMA as available exactly when the
    target has it (sm90+)."""
    check_available()
    from triton.runtime import driver
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import KernelInterface

    from dvg_engine.ops import _registry
    from dvg_engine.kernels import varlen_attention as attention_kernels

    log = CompileLog(arch)

    def launch_as_compile(kernel, grid):
        def compile_only(*args, **kwargs):
            if isinstance(kernel, Autotuner):
                # Autotuner.warmup skips the configs' pre-hooks, which size the TMA descriptors: run them here.
                nargs = dict(zip(kernel.arg_names, args))
                kernel.nargs = nargs
                try:
                    configs = kernel.prune_configs(kwargs)
                finally:
                    kernel.nargs = None
                for config in configs:
                    if config.pre_hook is not None:
                        config.pre_hook({**nargs, **kwargs, **config.all_kwargs()})
                    compiled = kernel.fn.warmup(*args, grid=grid, **kwargs, **config.all_kwargs())
                    log.add(compiled, kernel.fn.__name__, _config_label(config), True)
                return None
            compiled = kernel.warmup(*args, grid=grid, **kwargs)
            label = ", ".join(f"{k}={kwargs[k]}" for k in ("num_warps", "num_stages") if k in kwargs) or None
            log.add(compiled, kernel.__name__, label, False)
            return None
        return compile_only

    original_tma = attention_kernels.tma_supported

    def tma_for_target(q, k, v):
        if arch < 90:
            return False
        # the launcher's own rule (alignment, dense heads, power-of-two head dim), with the device check
        # answered for the target: it accepts CPU tensors only while "interpreting"
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            return original_tma(q, k, v)
        finally:
            if previous is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = previous

    saved_driver = getattr(driver, "_active", None)  # None: the default driver, created lazily on next use
    saved_getitem = KernelInterface.__getitem__
    saved_interpreting = _registry.triton_interpreting
    KernelInterface.__getitem__ = launch_as_compile
    _registry.triton_interpreting = lambda: True
    attention_kernels.tma_supported = tma_for_target
    driver.set_active(_TargetDriver(arch))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Triton 3.9's FP-fusion default notice, once per compile
            yield log
    finally:
        KernelInterface.__getitem__ = saved_getitem
        _registry.triton_interpreting = saved_interpreting
        attention_kernels.tma_supported = original_tma
        driver.set_active(saved_driver)
        # compiled kernels are cached per device index (0 here): drop them so another target recompiles
        for module in _kernel_modules():
            for fn in _jit_functions(module).values():
                fn.device_caches.clear()


# ---------------------------------------------------------------------------------------------------
# Kernel inventory
# ---------------------------------------------------------------------------------------------------

KERNEL_MODULES = ("varlen_attention", "pack", "modulated_layer_norm", "resample_renoise")


def _kernel_modules():
    return [importlib.import_module(f"dvg_engine.kernels.{name}") for name in KERNEL_MODULES]


def _jit_functions(module) -> Dict[str, object]:
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction
    found = {}
    for value in vars(module).values():
        fn = value.fn if isinstance(value, Autotuner) else value
        if isinstance(fn, JITFunction) and fn.module == module.__name__:
            found[fn.__name__] = fn
    return found


def entry_kernels() -> List[str]:
    """Names of the @triton.jit functions in dvg_engine.kernels that are launched (not called by another
    jit function): each must appear in the compile log."""
    functions = {}
    for module in _kernel_modules():
        functions.update(_jit_functions(module))
    sources = {name: fn.src for name, fn in functions.items()}
    called = {name for name in functions
              if any(re.search(rf"\b{name}\s*\(", src) for other, src in sources.items() if other != name)}
    return sorted(set(functions) - called)


# ---------------------------------------------------------------------------------------------------
# Cases: the op calls whose launches are compiled
# ---------------------------------------------------------------------------------------------------

def _attention(dtype, head_dim, heads_q=4, heads_kv=None, lengths=(70, 45), return_lse=False, config=None):
    """One varlen attention launch: through the op (autotuned) or, with `config`, the launcher's explicit path."""
    from dvg_engine.ops import _registry
    from dvg_engine.ops.attention import cu_seqlens_from_lengths, varlen_attention
    heads_kv = heads_kv or heads_q
    total = sum(lengths)
    q = torch.zeros(total, heads_q, head_dim, dtype=dtype)
    k = torch.zeros(total, heads_kv, head_dim, dtype=dtype)
    v = torch.zeros_like(k)
    cu = cu_seqlens_from_lengths(list(lengths))
    if config is None:
        with _registry.use_backend("triton"):
            varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths), return_lse=return_lse)
    else:
        from dvg_engine.kernels.varlen_attention import varlen_attention_fwd
        varlen_attention_fwd(q, k, v, cu, cu, max(lengths), max(lengths), head_dim ** -0.5, return_lse, config=config)


def _attention_case(dtype, head_dim, **kwargs):
    return lambda: _attention(dtype, head_dim, **kwargs)


def _attention_configs_case(dtype, head_dim, pick: Callable, return_lse=False, heads_kv=None):
    """Explicit-config launches: `pick(arch_configs)` chooses configs of the launcher's config space."""
    def run():
        from dvg_engine.kernels import varlen_attention as kernels
        from triton.runtime import driver
        tma_ok = driver.active.get_current_target().arch >= 90
        for config in pick([c for c in kernels._CONFIG_SPACE if tma_ok or not c.use_tma]):
            _attention(dtype, head_dim, heads_kv=heads_kv, return_lse=return_lse, config=config)
    return run


def _first_pointer_and_tma(configs):
    kept = [c for c in configs if (c.block_m, c.block_n) == (128, 64)]
    return [next(c for c in kept if not c.use_tma)] + [c for c in kept if c.use_tma][:1]


def _pack_inputs(dtype, features: Tuple[int, ...], text_stream=False, lengths=((24, 5), (40, 3)), text_len=8):
    from dvg_engine.ops.pack import packed_layout
    latent_lens = [n for n, _ in lengths]
    text_lens = [n for _, n in lengths]
    cu_latent, cu_seqlens, total, _ = packed_layout(latent_lens, text_lens)
    latent = torch.zeros(sum(latent_lens), *features, dtype=dtype)
    if text_stream:
        text = torch.zeros(sum(text_lens), *features, dtype=dtype)
        cu_text = torch.tensor([0] + list(torch.tensor(text_lens).cumsum(0).tolist()), dtype=torch.int32)
    else:
        text = torch.zeros(len(lengths), text_len, *features, dtype=dtype)
        cu_text = None
    return latent, text, cu_latent, cu_seqlens, total, cu_text


def _pack_case(dtype, features, text_stream=False, unpack=True):
    def run():
        from dvg_engine.ops import _registry
        from dvg_engine.ops.pack import pack_tokens, unpack_tokens
        latent, text, cu_latent, cu_seqlens, total, cu_text = _pack_inputs(dtype, features, text_stream)
        with _registry.use_backend("triton"):
            pack_tokens(latent, text, cu_latent, cu_seqlens, total, cu_text)
            if unpack:
                packed = torch.zeros(total, *features, dtype=dtype)
                unpack_tokens(packed, cu_latent, cu_seqlens, latent.shape[0],
                              text.shape[0] if text_stream else text.shape[1], cu_text)
    return run


def _out_case(dtype, heads, head_dim, dim):
    """The `out=` variants writing into views of larger buffers (serving stacks / CUDA graphs own the buffers):
    their strides are not the contiguous ones, so they specialise differently."""
    def run():
        from dvg_engine.ops import _registry
        from dvg_engine.ops.layer_norm import modulated_layer_norm
        from dvg_engine.ops.pack import pack_qk_rope, pack_tokens, unpack_tokens
        features = (heads, head_dim)
        latent, text, cu_latent, cu_seqlens, total, cu_text = _pack_inputs(dtype, features)
        grid_sizes = torch.tensor([[2, 3, 4], [2, 4, 5]], dtype=torch.int32)

        def view(rows, *shape):  # every other head slot of a wider buffer: strided heads and rows
            return torch.zeros(rows, shape[0] * 2, *shape[1:], dtype=dtype)[:, ::2]
        with _registry.use_backend("triton"):
            pack_tokens(latent, text, cu_latent, cu_seqlens, total, out=view(total, *features))
            unpack_tokens(torch.zeros(total, *features, dtype=dtype), cu_latent, cu_seqlens, latent.shape[0],
                          text.shape[1], latent_out=view(latent.shape[0], *features),
                          text_out=torch.zeros(text.shape[0], text.shape[1], heads * 2, head_dim, dtype=dtype)[:, :, ::2])
            pack_qk_rope(latent, latent.clone(), text, text.clone(), cu_latent, cu_seqlens, grid_sizes, total,
                         rope_axes_dim=HV_ROPE if head_dim == 128 else SMALL_ROPE, q_out=view(total, *features),
                         k_out=view(total, *features))
            x = torch.zeros(37, dim, dtype=dtype)
            cu = torch.tensor([0, 20, 37], dtype=torch.int32)
            scale = torch.zeros(2, dim, dtype=dtype)
            modulated_layer_norm(x, cu, scale, scale.clone(), out=torch.zeros(37, dim + 64, dtype=dtype)[:, :dim])
    return run


def _rope_case(dtype, heads, head_dim, rope_axes_dim, text_stream=False):
    def run():
        from dvg_engine.ops import _registry
        from dvg_engine.ops.pack import pack_qk_rope
        # grids (T, H, W) whose token counts are the latent lengths of _pack_inputs: 2·3·4 = 24, 2·4·5 = 40
        latent, text, cu_latent, cu_seqlens, total, cu_text = _pack_inputs(dtype, (heads, head_dim), text_stream)
        grid_sizes = torch.tensor([[2, 3, 4], [2, 4, 5]], dtype=torch.int32)
        with _registry.use_backend("triton"):
            pack_qk_rope(latent, latent.clone(), text, text.clone(), cu_latent, cu_seqlens, grid_sizes, total,
                         rope_axes_dim=rope_axes_dim, cu_text=cu_text)
    return run


def _layer_norm_case(dtype, dim, batch=2):
    def run():
        from dvg_engine.ops import _registry
        from dvg_engine.ops.layer_norm import modulated_layer_norm
        x = torch.zeros(37, dim, dtype=dtype)
        cu = torch.tensor([0, 20, 37] if batch == 2 else [0, 37], dtype=torch.int32)
        scale = torch.zeros(batch, dim, dtype=dtype)
        with _registry.use_backend("triton"):
            modulated_layer_norm(x, cu, scale, scale.clone())
    return run


def _resample_case(smoothing, layout, x_dtype=torch.float32, out_dtype=torch.bfloat16, packed=False):
    def run():
        from dvg_engine.ops import _registry
        from dvg_engine.ops.resample import resample_renoise, resample_renoise_packed, transition_tensors
        # a 0→1-like transition: fewer frames and a coarser grid, nested axes of a 9×16×24 full grid
        src_axes = ([0, 4, 8], [0, 6, 10, 14], [0, 4, 8, 12, 16, 22])
        dst_axes = ([0, 2, 4, 6, 8], list(range(0, 16, 2)), list(range(0, 24, 2)))
        idx = transition_tensors(src_axes, dst_axes)
        x0 = torch.zeros(1, 16, 3, 4, 6, dtype=x_dtype)
        seeds = torch.tensor([12345], dtype=torch.int64)
        with _registry.use_backend("triton"):
            if packed:
                # two samples with different grids, one launch each into the shared token stream
                idx2 = transition_tensors(([0, 8], [0, 14], [0, 22]), dst_axes)
                x1 = torch.zeros(1, 16, 2, 2, 2, dtype=x_dtype)
                resample_renoise_packed([x0, x1], *[[idx[f"anchor_{d}"], idx2[f"anchor_{d}"]] for d in "thw"],
                                        *[[idx[f"coord_{d}"], idx2[f"coord_{d}"]] for d in "thw"],
                                        torch.tensor([12345, 12345]), 0.9, smoothing=smoothing, out_dtype=out_dtype,
                                        patch=(1, 2, 2))
            else:
                resample_renoise(x0, seeds=seeds, sigma=0.9, smoothing=smoothing, out_dtype=out_dtype, layout=layout,
                                 patch=(1, 2, 2) if layout == "tokens" else (1, 1, 1), **idx)
    return run


BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
_SHORT = {BF16: "bf16", FP16: "fp16", FP32: "fp32"}


def _autotuned_attention(arch: int, full: bool) -> List[Tuple[torch.dtype, int]]:
    """(dtype, head_dim) of the attention cases that go through the autotuner on this target."""
    # bf16 d64 keeps a subset of d128's configs: its specialisation is compiled by the explicit d64 cases
    out = [(BF16, 128), (BF16, 256)]
    if arch >= 90 or full:
        out.append((FP32, 64))
    if full:
        out += [(BF16, 64), (BF16, 96), (FP32, 128), (FP32, 96), (FP32, 256)]
    return out


def _unreached_attention_configs(arch: int, full: bool) -> Callable:
    """Autotune configs of the config space that the prune keeps for none of the autotuned cases on this
    target: compiled once each through the explicit-config path (bf16, head dim 64)."""
    def run():
        from dvg_engine.kernels import varlen_attention as kernels
        reached = set()
        for dtype, head_dim in _autotuned_attention(arch, full):
            block_d = kernels.block_d_for(head_dim)
            tma_ok = arch >= 90 and block_d == head_dim
            reached.update(kernels.candidate_configs(block_d, torch.tensor([], dtype=dtype).element_size(), tma_ok))
        for config in kernels._CONFIG_SPACE:
            if config not in reached and (arch >= 90 or not config.use_tma):
                _attention(BF16, 64, config=config)
    return run
HV_ROPE = (16, 56, 56)  # HunyuanVideo, head dim 128
SMALL_ROPE = (16, 24, 24)  # the tiny test pipelines, head dim 64


def cases(arch: int, full: bool = False) -> List[Tuple[str, Callable]]:
    """(name, zero-arg launch function) for a target. The default set (the test's, ~2 min cold on 2 cores)
    compiles every launched kernel and every attention autotune config at least once, in bf16 / fp16 / fp32
    and head dims 64 / 128 / 256 (and 96, not a power of two) on sm90; sm80 gets the attention configs it
    can run (no TMA) and one variant of each other kernel. `full` adds the remaining dtype / head-dim /
    layout variants (fp32 attention is slow to compile: ~7-28 s per head dim)."""
    hopper = arch >= 90
    out: List[Tuple[str, Callable]] = []

    def add(name: str, fn: Callable, when: bool = True) -> None:
        if when:
            out.append((name, fn))

    # varlen attention through the op: every config the autotuner keeps for these inputs
    for dtype, head_dim in _autotuned_attention(arch, full):
        add(f"attention {_SHORT[dtype]} d{head_dim} autotune", _attention_case(dtype, head_dim))
    first_pointer = lambda configs: _first_pointer_and_tma(configs)[:1]  # noqa: E731
    add("attention bf16 d96 explicit (head dim not a power of two)",
        _attention_configs_case(BF16, 96, first_pointer), not full)
    add("attention fp16 d64 explicit", _attention_configs_case(FP16, 64, _first_pointer_and_tma))
    add("attention fp16 d128 explicit", _attention_configs_case(FP16, 128, _first_pointer_and_tma), full)
    add("attention bf16 d64 lse explicit", _attention_configs_case(BF16, 64, _first_pointer_and_tma, return_lse=True))
    add("attention bf16 d64 gqa 4/2 explicit", _attention_configs_case(BF16, 64, first_pointer, heads_kv=2))
    add("attention bf16 d128 gqa 4/2 explicit", _attention_configs_case(BF16, 128, _first_pointer_and_tma,
                                                                       heads_kv=2), full)
    add("attention fp32 d128 lse autotune", _attention_case(FP32, 128, return_lse=True), full)
    # packing: (tokens, heads, head_dim) streams, 2-D hidden states (features split into chunks), text streams
    add("pack/unpack bf16 24x128", _pack_case(BF16, (24, 128)))
    add("pack/unpack bf16 24x128 text stream", _pack_case(BF16, (24, 128), text_stream=True))
    add("pack/unpack bf16 hidden 3072", _pack_case(BF16, (3072,)), hopper or full)
    add("pack/unpack fp32 4x64", _pack_case(FP32, (4, 64)), hopper or full)
    add("pack/unpack fp16 4x96", _pack_case(FP16, (4, 96)), full)
    add("pack_qk_rope bf16 24x128", _rope_case(BF16, 24, 128, HV_ROPE))
    add("pack_qk_rope bf16 24x128 text stream", _rope_case(BF16, 24, 128, HV_ROPE, text_stream=True), hopper or full)
    add("pack_qk_rope fp32 4x64", _rope_case(FP32, 4, 64, SMALL_ROPE), full)
    add("pack_qk_rope fp16 4x64", _rope_case(FP16, 4, 64, SMALL_ROPE), full)
    add("out= variants bf16 24x128 (pack, unpack, pack_qk_rope, LN 3072) into strided views",
        _out_case(BF16, 24, 128, 3072), hopper or full)
    # segment-modulated LayerNorm: HunyuanVideo's 3072 channels; narrow and very wide rows change the tile
    add("modulated_layer_norm bf16 3072", _layer_norm_case(BF16, 3072))
    add("modulated_layer_norm bf16 16384", _layer_norm_case(BF16, 16384), hopper or full)
    add("modulated_layer_norm fp32 64", _layer_norm_case(FP32, 64), hopper or full)
    add("modulated_layer_norm fp16 3072 batch 1", _layer_norm_case(FP16, 3072, batch=1), full)
    add("modulated_layer_norm fp32 5120", _layer_norm_case(FP32, 5120), full)
    # fused resample + re-noise: smoothing none / zeros / exclude, (B,C,T,H,W) and token layouts, packed
    add("resample_renoise smoothing 0 bcthw", _resample_case(0, "bcthw"))
    add("resample_renoise smoothing 1 tokens", _resample_case(1, "tokens"), hopper or full)
    add("resample_renoise smoothing 2 bcthw", _resample_case(2, "bcthw"), hopper or full)
    add("resample_renoise smoothing 1 bcthw", _resample_case(1, "bcthw"), full)
    add("resample_renoise_packed smoothing 0", _resample_case(0, "tokens", packed=True), hopper or full)
    add("resample_renoise smoothing 0 tokens fp32", _resample_case(0, "tokens", out_dtype=FP32), full)
    add("resample_renoise smoothing 0 tokens", _resample_case(0, "tokens"), not (hopper or full))
    add("resample_renoise smoothing 2 tokens bf16 in", _resample_case(2, "tokens", x_dtype=BF16), full)
    add("resample_renoise smoothing 0 bcthw fp16 in/out", _resample_case(0, "bcthw", FP16, FP16), full)
    add("attention configs no autotuned case keeps (explicit, bf16 d64)", _unreached_attention_configs(arch, full))
    return out


def case_names(arch: int, full: bool = False) -> List[str]:
    return [name for name, _ in cases(arch, full)]


# ---------------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------------

def _resources(cubin: Optional[bytes]) -> dict:
    """Registers and spill stack per thread from the cubin (bundled cuobjdump), {} where unavailable."""
    import triton
    if not cubin:
        return {}
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    tool = tool if os.path.exists(tool) else shutil.which("cuobjdump")
    if not tool:
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", fh.name], capture_output=True, text=True).stdout
    info = {}
    for key, field in (("registers", "REG"), ("spill_stack", "STACK")):
        found = [int(x) for x in re.findall(rf"{field}:(\d+)", usage)]
        if found:
            info[key] = max(found)
    return info


def run_target(arch: int, shard: Tuple[int, int] = (0, 1), only: Optional[Sequence[str]] = None,
               resources: bool = False, extra: Sequence[Tuple[str, Callable]] = (), full: bool = False) -> dict:
    """Compile this shard's cases for sm_<arch>. Returns {"arch", "cases": [{name, ok, seconds, error?}],
    "kernels": [records]}; a failing case records its error and the others still run."""
    index, count = shard
    selected = (cases(arch, full) if not extra else []) + list(extra)
    if only:
        unknown = [name for name in only if name not in dict(selected)]
        if unknown:
            raise ValueError(f"--case {unknown} not found for sm{arch}; allowed: {list(dict(selected))}")
        selected = [(n, f) for n, f in selected if n in only]
    selected = [c for i, c in enumerate(selected) if i % count == index]
    results = []
    with aot_target(arch) as log:
        for name, fn in selected:
            log.case = name
            start = time.perf_counter()
            entry = {"name": name, "arch": arch}
            try:
                fn()
                entry["ok"] = True
            except Exception as exc:  # noqa: BLE001 - a failing kernel is the finding; the others still compile
                entry["ok"] = False
                entry["error"] = f"{type(exc).__name__}: {exc}"
                entry["traceback"] = traceback.format_exc(limit=6)
            entry["seconds"] = round(time.perf_counter() - start, 2)
            entry["kernels"] = sum(1 for r in log.records if r["case"] == name)
            results.append(entry)
            print(f"aot sm{arch} {'ok  ' if entry['ok'] else 'FAIL'} {name} ({entry['kernels']} kernels, "
                  f"{entry['seconds']} s)", flush=True)
            if not entry["ok"]:  # a CompilationError's first line is only the source position: print it all
                print(textwrap.indent(entry["error"][:3000], "    "), flush=True)
    records = []
    for record in log.records:
        cubin = record.pop("cubin")
        if resources:
            record.update(_resources(cubin))
        records.append(record)
    return {"arch": arch, "cases": results, "kernels": records}


def _gist(error: str) -> str:
    """The informative line of an error: Triton's CompilationError starts with the source position and ends
    with the cause."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return (lines[0] + " ... " + lines[-1])[:600] if len(lines) > 1 else (lines[0] if lines else error)


def problems(report: dict) -> List[str]:
    """Human-readable failures: failed cases, kernels that stop before a cubin, non-autotuned kernels whose
    shared memory exceeds the target (the autotuner skips such configs at run time; a fixed launch fails)."""
    out = [f"sm{report['arch']} case {c['name']!r}: {_gist(c['error'])}" for c in report["cases"] if not c["ok"]]
    for r in report["kernels"]:
        if r["stages"][-1:] != ["cubin"]:
            out.append(f"sm{r['arch']} {r['kernel']} ({r['case']}): compiled only to {r['stages']}")
        if not r["fits_shared"] and not r["autotuned"]:
            out.append(f"sm{r['arch']} {r['kernel']} ({r['case']}): {r['shared']} bytes of shared memory > "
                       f"{SHARED_MEMORY_LIMIT[r['arch']]} on this target")
    return out


def _run_extra_module(path: str, kernel: str, arch: int) -> dict:
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return run_target(arch, extra=[(f"{os.path.basename(path)}:{kernel}", getattr(module, kernel))])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], help="CUDA compute capabilities (90 80)")
    parser.add_argument("--shard", default="0/1", help="i/n: compile every n-th case starting at i (parallel runs)")
    parser.add_argument("--case", action="append", help="only these case names (repeatable; see --list)")
    parser.add_argument("--full", action="store_true", help="every dtype / head-dim / layout variant (slower)")
    parser.add_argument("--list", action="store_true", help="print the case names and the launched kernels, then exit")
    parser.add_argument("--resources", action="store_true", help="add registers / spill stack per kernel (cuobjdump)")
    parser.add_argument("--json", help="write the report (cases, compiled kernels) here")
    parser.add_argument("--module", help="compile a kernel of this file instead (with --kernel)")
    parser.add_argument("--kernel", help="zero-arg launch function in --module")
    args = parser.parse_args(argv)
    try:
        check_available()
    except AOTUnavailable as exc:
        print(f"aot: unavailable: {exc}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"unavailable": str(exc)}, fh)
        return 3
    if args.list:
        for arch in args.arch:
            print(f"sm{arch}: " + "; ".join(case_names(arch, args.full)))
        print("launched kernels: " + ", ".join(entry_kernels()))
        return 0
    shard = tuple(int(x) for x in args.shard.split("/"))
    if len(shard) != 2 or not 0 <= shard[0] < shard[1]:
        parser.error(f"--shard={args.shard!r} is invalid; allowed: i/n with 0 <= i < n")
    import triton
    reports = []
    start = time.perf_counter()
    for arch in args.arch:
        if args.module:
            reports.append(_run_extra_module(args.module, args.kernel, arch))
        else:
            reports.append(run_target(arch, shard, args.case, args.resources, full=args.full))
    found = [p for r in reports for p in problems(r)]
    from dvg_engine.kernels import varlen_attention as attention_kernels
    config_space = [[c.block_m, c.block_n, c.num_warps, c.num_stages, c.use_tma] for c in attention_kernels._CONFIG_SPACE]
    summary = {"triton": triton.__version__, "torch": torch.__version__, "entry_kernels": entry_kernels(),
               "attention_config_space": config_space,
               "reports": reports, "problems": found, "seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1, default=str)
    compiled = sum(len(r["kernels"]) for r in reports)
    print(f"aot: triton {triton.__version__}: {compiled} kernel specialisations compiled to cubin for "
          f"{', '.join('sm' + str(a) for a in args.arch)} in {summary['seconds']} s; "
          f"{'no problems' if not found else str(len(found)) + ' problem(s):'}", flush=True)
    for line in found:
        print("  " + line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
