"""The one tolerance module of the test-suite (DESIGN.md §6, STYLE.md).

* Attention and long reductions: the kernel's max error against an fp64 reference must be at most
  twice the error of a plain torch implementation in the same dtype, plus a small absolute floor.
* Pointwise ops: a per-dtype table.
"""
from __future__ import annotations

import torch

POINTWISE_ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
POINTWISE_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
ABS_FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3, torch.float64: 1e-12}


def assert_verbose_allclose(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float = 0.0,
                            max_print: int = 5, name: str = "tensor") -> None:
    """assert_close that prints the mismatch count, the first offending indices with both values, and
    NaN/inf mismatches separately."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    inf_mismatch = (torch.isinf(a) | torch.isinf(e)) & ~(a == e)
    finite = torch.isfinite(a) & torch.isfinite(e)
    bad = finite & ((a - e).abs() > atol + rtol * e.abs())
    bad = bad | nan_mismatch | inf_mismatch
    if bool(bad.any()):
        idx = bad.nonzero()[:max_print]
        lines = [f"{name}: {int(bad.sum())} of {a.numel()} elements differ (atol={atol:g}, rtol={rtol:g}); "
                 f"NaN mismatches {int(nan_mismatch.sum())}, inf mismatches {int(inf_mismatch.sum())}; "
                 f"max abs err {float(((a - e).abs()[finite]).max()) if bool(finite.any()) else float('nan'):.3g}"]
        for i in idx.tolist():
            lines.append(f"  at {tuple(i)}: actual={a[tuple(i)].item()!r} expected={e[tuple(i)].item()!r}")
        raise AssertionError("\n".join(lines))


def assert_pointwise_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "tensor") -> None:
    dtype = actual.dtype
    assert_verbose_allclose(actual, expected, atol=POINTWISE_ATOL[dtype], rtol=POINTWISE_RTOL[dtype], name=name)


def assert_twice_torch_error(kernel_out: torch.Tensor, torch_out: torch.Tensor, ref64: torch.Tensor,
                             name: str = "tensor") -> None:
    """FlashAttention's rule: max|kernel − ref64| ≤ 2·max|torch_same_dtype − ref64| + floor."""
    floor = ABS_FLOOR[kernel_out.dtype]
    k_err = (kernel_out.double() - ref64.double()).abs().max().item() if kernel_out.numel() else 0.0
    t_err = (torch_out.double() - ref64.double()).abs().max().item() if torch_out.numel() else 0.0
    assert k_err == k_err, f"{name}: kernel output has NaN"
    assert k_err <= 2 * t_err + floor, (f"{name}: kernel max error {k_err:.3g} > 2 × torch error {t_err:.3g} "
                                        f"+ floor {floor:g}")
