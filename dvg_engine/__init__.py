"""dvg_engine — training-free DVG (Dynamic Video Generation, arXiv 2605.21042) sampling for
HunyuanVideo and HunyuanVideo-1.5 in diffusers.

Public surface:
    compile_pipeline(pipe, config=None, **overrides) -> pipe   (undo: pipe.dvg.restore())
    DVGConfig                                                 (every knob; faithful defaults)
    plan_stages, full_grid, feasible_budget_intervals         (the planner, usable on its own)
    dvg_engine.ops                                            (torch.ops.dvg.* and functional wrappers)

Names are resolved lazily so that `import dvg_engine` (and the `dvg plan` CLI) does not import
diffusers or triton.
"""
from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# Source-checkout support: setup.py installs the top-level `kernels/` folder as `dvg_engine.kernels`.
# When the package is used straight from a checkout (PYTHONPATH=., e.g. on an offline GPU host) there
# is no such mapping, so let the package's search path include the checkout root — only when the
# package folder has no `kernels` of its own and the sibling folder is ours.
_pkg_dir = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_pkg_dir)
if not _os.path.isdir(_os.path.join(_pkg_dir, "kernels")) and _os.path.isfile(
        _os.path.join(_root, "kernels", "DVG_KERNELS")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821

_LAZY = {
    "compile_pipeline": ("dvg_engine.engine", "compile_pipeline"),
    "DVGConfig": ("dvg_engine.config", "DVGConfig"),
    "plan_stages": ("dvg_engine.planner", "plan_stages"),
    "full_grid": ("dvg_engine.planner", "full_grid"),
    "feasible_budget_intervals": ("dvg_engine.planner", "feasible_budget_intervals"),
    "InfeasibleBudgetError": ("dvg_engine.planner", "InfeasibleBudgetError"),
    "compute_demands": ("dvg_engine.demands", "compute_demands"),
    "initial_plan": ("dvg_engine.planner", "initial_plan"),
    "check_budget": ("dvg_engine.planner", "check_budget"),
    "plan_from_x0": ("dvg_engine.planner", "plan_from_x0"),
    "Plan": ("dvg_engine.planner", "Plan"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dvg_engine' has no attribute {name!r}")


def __dir__():
    return __all__
