"""Triton kernels of dvg_engine, installed as `dvg_engine.kernels` (never a top-level `kernels`
module: that name belongs to Hugging Face's kernel-hub package, which diffusers imports).

Pure kernel code: no diffusers import. Each module is imported lazily by `dvg_engine.ops` only when
the Triton backend is chosen, so the package works where triton is not installed.
"""
