"""Where the op tests run and which backends can run there (shared by the op test modules).

With DVG_TEST_GPU=1 on a CUDA machine (`make gpu-check`) the op tests run on CUDA; otherwise on the CPU,
where Triton needs TRITON_INTERPRET=1 (set by conftest.py) and C++ needs the built extension.

DVG_TEST_DEVICE=sim (private, for finding test bugs before a GPU run) runs the whole session under the simulated
CUDA device of `_cuda_sim` (conftest.py enters it) with DEVICE on it: the op tests then build their tensors "on the
GPU" and any tensor they forget to put there meets the device tensors as CUDA would have it."""
import contextlib
import os
import subprocess
import sys
import textwrap
import warnings
from typing import Iterator

import pytest
import torch

from dvg_engine.ops import _registry

SIMULATE_ALL = os.environ.get("DVG_TEST_DEVICE") == "sim" and not torch.cuda.is_available()
GPU = os.environ.get("DVG_TEST_GPU") == "1" and torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU or SIMULATE_ALL else "cpu")


def skip_unless_runs(backend: str) -> None:
    if backend == "cpp" and not _registry.cpp_available():
        pytest.skip("the C++ extension dvg_engine._C is not built")
    if backend == "triton":
        if not _registry.triton_importable():
            pytest.skip("triton is not importable")
        if DEVICE.type == "cpu" and not _registry.triton_interpreting():
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")


# ---- devices of the CUDA tests ------------------------------------------------------------------------------------
# The tests written for CUDA take conftest.py's `device` ("cpu" and "cuda") or `cuda_device` ("cuda" only) fixture.
# "cuda" is the real GPU where one is present; without one it is the simulated device of `_cuda_sim` (CPU kernels,
# device placement and host syncs followed), so their logic — which tensor lives where, what reads the device back
# — runs on every machine. DVG_TEST_DEVICE=skip makes "cuda" skip instead, as it did before the simulation.
REAL_CUDA = torch.cuda.is_available()
SIMULATE_CUDA = not REAL_CUDA and os.environ.get("DVG_TEST_DEVICE", "sim") != "skip"
CUDA_ID = "cuda" if REAL_CUDA else "cuda_sim"


@contextlib.contextmanager
def device_for(name: str) -> Iterator[torch.device]:
    """The torch.device a test builds its tensors on for a parametrised device name ("cpu" or "cuda"): with the
    simulation in force for the block where "cuda" is simulated."""
    if name == "cpu":
        yield torch.device("cpu")
    elif REAL_CUDA:  # with its index, as tensors report it (torch.device("cuda") != torch.device("cuda:0"))
        yield torch.device("cuda", torch.cuda.current_device())
    elif not SIMULATE_CUDA:
        pytest.skip("needs a CUDA device")
    else:
        from _cuda_sim import _ACTIVE, SIM_DEVICE, SimulatedCuda
        if _ACTIVE:  # the session-wide simulation of DVG_TEST_DEVICE=sim
            yield SIM_DEVICE
        else:
            with SimulatedCuda():
                yield SIM_DEVICE


def auto_backend(op: str, device) -> str:
    """The backend `_registry`'s "auto" runs `op` with for tensors on `device`: Triton on a real GPU; on the CPU
    (and the simulated device, whose kernels are CPU ones) C++ for the ops that have it, else the torch reference."""
    if torch.device(device).type == "cuda" and REAL_CUDA:
        return "triton"
    return "cpp" if op in CPP_OPS and _registry.cpp_available() else "torch"


CPP_OPS = {"pack_tokens", "unpack_tokens", "pack_qk_rope", "resample_renoise", "modulated_layer_norm",
           "pack_tokens_out", "unpack_tokens_out", "pack_qk_rope_out", "modulated_layer_norm_out"}


def synchronising_calls(run) -> int:
    """How many calls synchronising with the host `run()` makes on the CUDA device (a GPU, or the simulated device,
    which emulates the sync debug mode): CUDA's sync debug mode warns once per such call."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def run_python(script: str, unset=("TRITON_INTERPRET",), **env: str) -> None:
    """Run `script` (dedented) in a fresh Python from the repository root, with tests/ importable, the variables
    in `unset` removed from the environment and `env` set (e.g. DVG_CPP_SIMD="0", which the C++ kernels read
    per process); the script must print OK."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    environ.update(env)
    code = "import sys; sys.path.insert(0, 'tests')\n" + textwrap.dedent(script)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300,
                            cwd=repo)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr
