"""Test setup. TRITON_INTERPRET must be set before the first `import triton` in the process (and
`import diffusers` imports triton), so it is decided here, before anything else is imported: on a
machine without an NVIDIA GPU the Triton kernels run in the interpreter on CPU tensors."""
import os
import shutil

if "TRITON_INTERPRET" not in os.environ:
    _has_gpu = os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None
    if not _has_gpu:
        os.environ["TRITON_INTERPRET"] = "1"

import pathlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def parity_dir() -> pathlib.Path:
    """The parity folder: $DVG_PARITY_DIR, default ../shared/parity from the repository root.
    A missing folder fails the run (never a silent skip)."""
    path = pathlib.Path(os.environ.get("DVG_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))
    if not path.is_dir():
        raise FileNotFoundError(f"parity folder {path} not found; set DVG_PARITY_DIR to the folder of parity vectors")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny tensors: on a shared 2-core machine torch's intra-op pool only adds spin-wait
    (measured 1.8 s vs 0.05 s per call under load). Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`; the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# On a GPU check (DVG_TEST_GPU=1 with a GPU: gpu_check.py, a time-limited lease) the "cpu" half of `device` is left
# out: CI runs it on every commit.
_GPU_CHECK = os.environ.get("DVG_TEST_GPU") == "1" and torch.cuda.is_available()


@pytest.fixture(params=["cuda"] if _GPU_CHECK else ["cpu", "cuda"],
                ids=["cuda"] if _GPU_CHECK else ["cpu", "cuda" if torch.cuda.is_available() else "cuda_sim"])
def device(request):
    """The device of a test written for CUDA, run twice: "cpu", and "cuda" — the GPU, or without one the simulated
    CUDA device of tests/_cuda_sim.py (see tests/_backends.py). On a GPU check, "cuda" only."""
    from _backends import device_for
    with device_for(request.param) as dev:
        yield dev


@pytest.fixture(params=["cuda"], ids=["cuda" if torch.cuda.is_available() else "cuda_sim"])
def cuda_device(request):
    """As `device`, "cuda" only (a GPU, or the simulated device)."""
    from _backends import device_for
    with device_for(request.param) as dev:
        yield dev


@pytest.fixture(scope="session")
def parity_path() -> pathlib.Path:
    return parity_dir()


def pytest_configure(config):
    # DVG_TEST_DEVICE=sim: the whole session on the simulated CUDA device (see tests/_backends.py)
    if os.environ.get("DVG_TEST_DEVICE") == "sim" and not torch.cuda.is_available():
        import sys
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from _cuda_sim import SimulatedCuda
        config._dvg_simulated_cuda = SimulatedCuda().__enter__()


def pytest_unconfigure(config):
    sim = getattr(config, "_dvg_simulated_cuda", None)
    if sim is not None:
        sim.__exit__(None, None, None)


_INTERPRETER_PROBLEM = []


def interpreter_problem():
    """None, or why this triton's interpreter cannot run the kernels here. Seen: triton 3.6's interpreter turns a
    loop bound loaded from memory into an int with `int(one_element_array)`, which numpy >= 2.4 refuses, so
    every Triton-on-CPU test fails with "only 0-dimensional arrays can be converted to Python scalars"
    (triton 3.9's squeezes first). Probed once, on a loop with a loaded bound, as the kernels have."""
    if _INTERPRETER_PROBLEM:
        return _INTERPRETER_PROBLEM[0]
    problem = None
    from dvg_engine.ops import _registry
    if os.environ.get("TRITON_INTERPRET") == "1" and _registry.triton_importable():
        import numpy
        import triton
        import triton.language as tl

        @triton.jit
        def _loaded_bound_loop(N, Out):
            total = 0
            for i in range(0, tl.load(N)):
                total += i
            tl.store(Out, total)

        out = torch.zeros(1, dtype=torch.int32)
        try:
            _loaded_bound_loop[(1,)](torch.tensor([4], dtype=torch.int32), out)
            if int(out) != 6:
                problem = f"a probe kernel computed {int(out)} instead of 6"
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding
            problem = (f"triton {triton.__version__}'s interpreter fails under numpy {numpy.__version__} "
                       f"({type(exc).__name__}: {str(exc)[:120]}); the Triton-on-CPU tests will fail: use "
                       f"numpy<2.4 or a newer triton (3.9 works)")
    _INTERPRETER_PROBLEM.append(problem)
    return problem


def pytest_report_header(config):
    from dvg_engine.ops import _registry
    lines = [f"dvg: torch {torch.__version__}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}, "
             f"cuda={'yes' if torch.cuda.is_available() else 'no'}"
             f"{' (DVG_TEST_DEVICE=sim: simulated CUDA device)' if os.environ.get('DVG_TEST_DEVICE') == 'sim' else ''}",
             f"dvg: C++ extension dvg_engine._C: {'built' if _registry.cpp_available() else 'MISSING (cpp tests skip)'}",
             f"dvg: triton: {'importable' if _registry.triton_importable() else 'MISSING (triton tests skip)'}"]
    if interpreter_problem():
        lines.append(f"dvg: WARNING: {interpreter_problem()}")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from dvg_engine.ops import _registry
    if not _registry.cpp_available():
        terminalreporter.write_line("WARNING: the C++ extension dvg_engine._C is missing: the C++ backend tests were "
                                    "skipped", red=True)
    if not _registry.triton_importable():
        terminalreporter.write_line("WARNING: triton is not importable: the Triton kernel tests were skipped", red=True)
    if interpreter_problem():
        terminalreporter.write_line(f"WARNING: {interpreter_problem()}", red=True)


@pytest.fixture(scope="module")
def hv():
    """A tiny HunyuanVideoPipeline built from configs, shared by a test module."""
    import _tiny_pipes as tp
    pipe = tp.hv_pipe()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def fresh_hv(hv):
    """`hv`, restored after the test: DVG compilation undone and any diffusers cache hook removed."""
    yield hv
    if "dvg" in hv.__dict__:
        hv.dvg.restore()
    if hv.transformer.is_cache_enabled:
        hv.transformer.disable_cache()
