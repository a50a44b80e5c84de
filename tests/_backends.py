"""Where the op tests run and which backends can run there (shared by the op test modules).

With DVG_TEST_GPU=1 on a CUDA machine (`make gpu-check`) the op tests run on CUDA; otherwise on the CPU,
where Triton needs TRITON_INTERPRET=1 (set by conftest.py) and C++ needs the built extension."""
import os

import pytest
import torch

from dvg_engine.ops import _registry

GPU = os.environ.get("DVG_TEST_GPU") == "1" and torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")


def skip_unless_runs(backend: str) -> None:
    if backend == "cpp" and not _registry.cpp_available():
        pytest.skip("the C++ extension dvg_engine._C is not built")
    if backend == "triton":
        if not _registry.triton_importable():
            pytest.skip("triton is not importable")
        if DEVICE.type == "cpu" and not _registry.triton_interpreting():
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
