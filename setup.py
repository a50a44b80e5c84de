"""Packaging for dvg_engine.

`kernels/` is installed as `dvg_engine.kernels` (never a top-level `kernels` module: that name
belongs to Hugging Face's kernel-hub package, which diffusers imports).

The C++ CPU extension (`dvg_engine._C`, from `csrc/`) is built only when torch is importable at
build time and a C++ compiler is found. Install torch first and then this package with
`pip install --no-build-isolation .` — under build isolation pip would hide the installed torch
(and naming torch as a build requirement would pull a multi-GB CUDA build). Without the extension
the package still installs and works with the torch (and Triton) backends.
"""
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cpp_extension():
    if os.environ.get("DVG_NO_CPP", "0") == "1":
        print("dvg_engine: DVG_NO_CPP=1, skipping the C++ extension", file=sys.stderr)
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # torch missing at build time (build isolation, or not installed)
        print(f"dvg_engine: torch not importable at build time ({exc}); skipping the C++ extension",
              file=sys.stderr)
        return [], {}
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        print("dvg_engine: no C++ compiler found; skipping the C++ extension", file=sys.stderr)
        return [], {}
    sources = sorted(
        os.path.join("csrc", name) for name in os.listdir(os.path.join(HERE, "csrc")) if name.endswith(".cpp")
    )
    if not sources:
        return [], {}
    flags = ["-O3", "-std=c++17", "-fopenmp"]
    ext = CppExtension(
        "dvg_engine._C",
        sources,
        depends=sorted(os.path.join("csrc", name) for name in os.listdir(os.path.join(HERE, "csrc"))
                       if name.endswith(".h")),
        extra_compile_args={"cxx": flags},
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _cpp_extension()

with open(os.path.join(HERE, "README.md"), encoding="utf-8") as fh:
    long_description = fh.read()

setup(
    name="dvg_engine",
    version="0.1.0",
    description="Training-free DVG (Dynamic Video Generation) sampling for HunyuanVideo and HunyuanVideo-1.5",
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["dvg_engine", "dvg_engine.ops", "dvg_engine.kernels"],
    package_dir={"dvg_engine": "dvg_engine", "dvg_engine.kernels": "kernels"},
    package_data={"dvg_engine": ["assets/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "diffusers>=0.35,<0.43",
        "transformers>=4.46",
        "numpy>=1.24",
        "tqdm",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "psutil", "peft>=0.12"],
        "video": ["imageio>=2.31", "imageio-ffmpeg>=0.5"],
        "flash": ["flash-attn>=2.5"],
    },
    entry_points={"console_scripts": ["dvg = dvg_engine.cli:main"]},
    zip_safe=False,
)
