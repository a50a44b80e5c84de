"""`DVGConfig`: every knob of the method and of the engine, faithful by default.

Each improvement on a quirk of the published implementation (dvg-spec.md §15) is a named option
whose default reproduces the reference exactly:

| option | reference value (default) | improvement | quirk |
|---|---|---|---|
| `transition_noise` | `"reference"` (seed 12345 for every video) | `"seeded"`: derive it from the user's seed, per sample | Q1 |
| `budget_accounting` | `"reference"` (accounting step counts) | `"executed"`: the model calls actually run per stage | Q2 |
| `budget_fallback` | `"error"` (raise, stating the feasible range) | `"nearest"`: use the nearest feasible budget, reported | Q3 |
| `hv15_timesteps` | `"reference"` (stale stage-0 timesteps) | `"reshifted"`: the re-shifted schedule's timesteps | Q5 |
| `smoothing_padding` | `"zeros"` (3×3 pool counts the zero padding) | `"exclude"`: average over in-frame pixels only | Q8 |
| `plan_scope` | `"sample"` (one plan per sample; = reference for B=1) | `"batch"` pools the batch exactly as the reference | §6.3 |
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

REFERENCE_NOISE_SEED = 12345
REFERENCE_STAGE_SHIFTS: Tuple[float, float, float, float] = (7.0, 9.0, 11.0, 11.0)

_CHOICES = {
    "plan_scope": ("sample", "batch"),
    "budget_fallback": ("error", "nearest"),
    "transition_noise": ("reference", "seeded"),
    "budget_accounting": ("reference", "executed"),
    "hv15_timesteps": ("reference", "reshifted"),
    "smoothing_padding": ("zeros", "exclude"),
    "backend": ("auto", "torch", "triton", "cpp"),
}


@dataclass
class DVGConfig:
    """Configuration of a DVG run. Defaults reproduce the published algorithm."""

    enabled: bool = True
    budget: float = 0.5
    plan_scope: str = "sample"
    budget_fallback: str = "error"
    transition_noise: str = "reference"
    noise_seed: int = REFERENCE_NOISE_SEED
    budget_accounting: str = "reference"
    hv15_timesteps: str = "reference"
    smoothing_padding: str = "zeros"
    stage_shifts: Tuple[float, float, float, float] = REFERENCE_STAGE_SHIFTS
    backend: str = "auto"
    allow_fewer_stages: bool = False
    # False: eager blocks. True: `torch.compile` with its defaults. A dict: `torch.compile` keyword arguments
    # (keys COMPILE_BLOCKS_KEYS, e.g. {"backend": "aot_eager"} or {"mode": "max-autotune"}). Always with
    # dynamic=False (one graph per stage shape, none per step), except the packed token count, which follows
    # the prompts' valid text lengths and is marked dynamic so that new prompt lengths reuse the graphs;
    # recompile_limit defaults to 64 where torch
    # supports it (see `engine._compiled_blocks`). Mixed-plan batches compile the packed forward's per-block
    # computations the same way (`processors.PackedHunyuanVideoForward`).
    compile_blocks: Union[bool, Dict[str, Any]] = False
    # True: RoPE is applied inside the q/k packing (`torch.ops.dvg.pack_qk_rope`, cos/sin computed in-kernel)
    # instead of from per-stage-shape cos/sin tables. Same results (tested); off until it is measured on a GPU.
    fused_rope: bool = False
    round_num_frames: bool = False
    plan: Optional[Any] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "DVGConfig":
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"DVGConfig.{name}={value!r} is not supported; allowed: {', '.join(map(repr, allowed))}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not math.isfinite(self.budget) \
                or not (0.0 < float(self.budget) <= 1.0):
            raise ValueError(f"DVGConfig.budget={self.budget!r} is out of range; allowed: a number in (0, 1]")
        self.budget = float(self.budget)
        if isinstance(self.noise_seed, bool) or not isinstance(self.noise_seed, int):
            raise ValueError(f"DVGConfig.noise_seed={self.noise_seed!r} is not an integer; allowed: any int")
        shifts = tuple(self.stage_shifts)
        if len(shifts) != 4 or not all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in shifts):
            raise ValueError(f"DVGConfig.stage_shifts={self.stage_shifts!r} is invalid; allowed: four positive numbers")
        self.stage_shifts = tuple(float(s) for s in shifts)
        for name in ("enabled", "allow_fewer_stages", "round_num_frames", "fused_rope"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DVGConfig.{name}={getattr(self, name)!r} is not a bool; allowed: True or False")
        if isinstance(self.compile_blocks, dict):
            self.compile_blocks = _check_compile_kwargs(self.compile_blocks)
        elif not isinstance(self.compile_blocks, bool):
            raise ValueError(f"DVGConfig.compile_blocks={self.compile_blocks!r} is invalid; allowed: True, False, or a "
                             f"dict of torch.compile keyword arguments with keys in {list(COMPILE_BLOCKS_KEYS)}")
        return self

    def replace(self, **overrides: Any) -> "DVGConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown DVG option(s) {unknown}; allowed: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        # a compile backend may be any callable: described by name, so the dict stays JSON (reports embed it)
        out = dataclasses.asdict(dataclasses.replace(self, compile_blocks=False))
        out["compile_blocks"] = self.compile_blocks if isinstance(self.compile_blocks, bool) else {
            key: _json_or_name(value) for key, value in self.compile_blocks.items()}
        out["stage_shifts"] = list(self.stage_shifts)
        if self.plan is not None and not isinstance(self.plan, (dict, list, str, int, float)):
            out["plan"] = repr(self.plan)
        return out


# torch.compile's keyword arguments that `compile_blocks` passes through (recompile_limit: recent torch releases
# only; the engine says so when it is missing). `dynamic` is not among them: the engine fixes dynamic=False so
# that each stage shape compiles once and no step recompiles.
COMPILE_BLOCKS_KEYS = ("backend", "mode", "options", "fullgraph", "disable", "recompile_limit")


def _check_compile_kwargs(kwargs: dict) -> dict:
    name = "DVGConfig.compile_blocks"
    for key in kwargs:
        if key == "dynamic":
            raise ValueError(f"{name}={kwargs!r} sets 'dynamic'; allowed keys: {list(COMPILE_BLOCKS_KEYS)} (the "
                             f"engine compiles with dynamic=False: one graph per stage shape, none per step)")
        if key not in COMPILE_BLOCKS_KEYS:
            raise ValueError(f"{name} has the unknown key {key!r}; allowed keys: {list(COMPILE_BLOCKS_KEYS)} "
                             f"(torch.compile keyword arguments)")
    backend = kwargs.get("backend")
    if backend is not None and not (isinstance(backend, str) or callable(backend)):
        raise ValueError(f"{name}['backend']={backend!r} is invalid; allowed: a backend name such as 'inductor', "
                         f"'aot_eager' or 'eager', or a callable (gm, example_inputs) -> callable")
    mode = kwargs.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise ValueError(f"{name}['mode']={mode!r} is invalid; allowed: None or a mode name such as "
                         f"'reduce-overhead' or 'max-autotune'")
    options = kwargs.get("options")
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"{name}['options']={options!r} is invalid; allowed: None or a dict of backend options")
    if mode is not None and options is not None:
        raise ValueError(f"{name}={kwargs!r} sets both 'mode' and 'options'; allowed: one of them (torch.compile "
                         f"accepts only one)")
    for key in ("fullgraph", "disable"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise ValueError(f"{name}[{key!r}]={kwargs[key]!r} is not a bool; allowed: True or False")
    limit = kwargs.get("recompile_limit")
    if "recompile_limit" in kwargs and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{name}['recompile_limit']={limit!r} is invalid; allowed: a positive int (graphs kept per "
                         f"block code object: about 3 per stage shape)")
    return dict(kwargs)


def _json_or_name(value: Any) -> Any:
    import json
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        target = value if hasattr(value, "__qualname__") else type(value)  # a function or class, else its class
        return f"{target.__module__}.{target.__qualname__}"
