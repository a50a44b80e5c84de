"""The DVG stage planner (dvg-spec.md §2–§5, §7, §8, §13), exact and faithful by default.

Everything here is integer or Python-double arithmetic in the order the published implementation
uses, so shapes, densities, scores, the candidate order and the choice reproduce
`parity/planner.json` and `parity/axes.json` bit for bit. No torch is needed to plan from given
demands (the `dvg plan` CLI stays fast); `plan_from_x0` imports `dvg_engine.demands` (torch) lazily.

Units. A `FullGrid` carries three views of one video:

* `latent_shape` (T, H, W): what the transformer's latents are (HV: pixels / 8; HV-1.5: pixels // 16);
* `dvg_full_shape`: what the reference planner is handed — HV: (T, H_px, W_px) in *pixels*,
  HV-1.5: the latent shape. Rates, candidate densities and the reported density use these units (Q4);
* token shape: latent / patch (HV patch (1, 2, 2), HV-1.5 (1, 1, 1)).

A stage plan has four stages; stage 3 is the full grid. Stage 0 is (round(T·0.8·budget) frames, half
size); planning (at the first transition, from the x̂0 demands S and M) picks stage 1 = (t23 frames,
spatial rate s2) and stage 2 = (t23 frames, full size) from the candidates whose token-step density
is within ±0.02 of the budget.

Deliberate deviations, all named options that are off by default (see `DVGConfig`):

* `budget_accounting="executed"` (Q2): densities count the model calls the sampler really runs per
  stage instead of the reference's accounting counts.
* `budget_fallback="nearest"` (Q3): an infeasible budget is replaced by the nearest feasible one,
  recorded in `Plan.budget_used` / `Plan.fallback`. In every mode the infeasibility is detected by
  `check_budget` *before* any model compute, and the error states the exact feasible budget set.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._checks import check_choice, check_float, check_int, fail

Shape = Tuple[int, int, int]

HUNYUAN_VIDEO = "hunyuan_video"
HUNYUAN_VIDEO_1_5 = "hunyuan_video_1_5"
MODEL_ALIASES: Dict[str, str] = {
    "hunyuan_video": HUNYUAN_VIDEO,
    "hunyuan-video": HUNYUAN_VIDEO,
    "hunyuan_video_1_5": HUNYUAN_VIDEO_1_5,
    "hunyuan-video-1.5": HUNYUAN_VIDEO_1_5,
}

NUM_STAGES = 4
TRANSITION_RATES = (0.28, 0.50, 0.72)
STAGE0_SPATIAL_RATE = 0.5
STAGE0_TEMPORAL_FACTOR = 0.8
DENSITY_TOLERANCE = 0.02
SPATIAL_CANDIDATE_STEP = 0.1
DEMAND_TEMPERATURE = 2.6
DECISION_LAMBDA = 0.5
BUDGET_ACCOUNTINGS = ("reference", "executed")
BUDGET_FALLBACKS = ("error", "nearest")
PLAN_SCOPES = ("sample", "batch")

_ERROR_WHERE = "plan (first transition, before any resize)"


# --------------------------------------------------------------------------------------------------
# Full grid per backbone (§2)
# --------------------------------------------------------------------------------------------------

def canonical_model(name: Any) -> str:
    """'hunyuan-video' / 'hunyuan_video' -> 'hunyuan_video'; 'hunyuan-video-1.5' / 'hunyuan_video_1_5'
    -> 'hunyuan_video_1_5'. Anything else raises ValueError naming the allowed spellings."""
    if isinstance(name, str) and name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    fail("model", name, "one of " + ", ".join(repr(k) for k in MODEL_ALIASES))
    raise AssertionError  # unreachable: fail() raises


@dataclass(frozen=True)
class FullGrid:
    """The full-size grid of one generation, in the three unit systems the planner uses.

    latent_shape: (T, H, W) latent frames/rows/columns. dvg_full_shape: what DVG plans on — HV (T, H_px,
    W_px) with the 16-px-aligned pipeline pixel size, HV-1.5 the latent shape. patch: the transformer's
    (t, h, w) patch size. latent_channels: 16 (HV) or 32 (HV-1.5)."""

    model: str
    height_px: int
    width_px: int
    pipeline_height_px: int
    pipeline_width_px: int
    num_frames: int
    latent_shape: Shape
    dvg_full_shape: Shape
    patch: Shape
    latent_channels: int

    @property
    def is_hunyuan_video(self) -> bool:
        return self.model == HUNYUAN_VIDEO

    @property
    def token_shape(self) -> Shape:
        return tuple(n // p for n, p in zip(self.latent_shape, self.patch))  # type: ignore[return-value]

    @property
    def latent_frames(self) -> int:
        return self.latent_shape[0]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("latent_shape", "dvg_full_shape", "patch"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "FullGrid":
        grid = full_grid(data["model"], data["height_px"], data["width_px"], data["num_frames"])
        for key in ("pipeline_height_px", "pipeline_width_px", "latent_shape", "dvg_full_shape"):
            if key in data and _as_tuple(data[key]) != _as_tuple(getattr(grid, key)):
                fail(f"grid.{key}", data[key], f"the value implied by the inputs, {getattr(grid, key)!r}")
        return grid


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def full_grid(model: str, height: int, width: int, num_frames: int, *, round_num_frames: bool = False) -> FullGrid:
    """The full grid of a `model` generation of `height` × `width` pixels and `num_frames` frames (§2).

    HV rounds the pixel size up to a multiple of 16 (540 -> 544) and plans in pixels; HV-1.5 plans on
    the latent grid (pixels // 16). `num_frames` must be 4k+1 (the causal 4× VAE); with
    `round_num_frames=True` it is floored to that form, as diffusers does silently."""
    model = canonical_model(model)
    num_frames = check_int("num_frames", num_frames, minimum=1)
    if (num_frames - 1) % 4:
        if not round_num_frames:
            fail("num_frames", num_frames, "4k+1 frames (e.g. 33, 61, 121, 129)")
        num_frames = (num_frames - 1) // 4 * 4 + 1
    latent_frames = (num_frames - 1) // 4 + 1
    if model == HUNYUAN_VIDEO:
        # 32 px is the smallest size whose half-size stage 0 still has one 16-px token row.
        height = check_int("height", height, minimum=17)
        width = check_int("width", width, minimum=17)
        pipe_h, pipe_w = -(-height // 16) * 16, -(-width // 16) * 16
        latent = (latent_frames, pipe_h // 8, pipe_w // 8)
        return FullGrid(model, height, width, pipe_h, pipe_w, num_frames, latent,
                        (latent_frames, pipe_h, pipe_w), (1, 2, 2), 16)
    height = check_int("height", height, minimum=16)
    width = check_int("width", width, minimum=16)
    latent = (latent_frames, height // 16, width // 16)
    return FullGrid(model, height, width, height, width, num_frames, latent, latent, (1, 1, 1), 32)


# --------------------------------------------------------------------------------------------------
# Step bookkeeping (§4)
# --------------------------------------------------------------------------------------------------

def _check_steps(num_steps: Any) -> int:
    return check_int("num_steps", num_steps, minimum=1)


def transition_steps(num_steps: int) -> Tuple[int, ...]:
    """Sorted set {int(N·0.28), int(N·0.5), int(N·0.72)}: N=50 -> (14, 25, 36); N=4 -> (1, 2) (Q6)."""
    num_steps = _check_steps(num_steps)
    return tuple(sorted({int(num_steps * rate) for rate in TRANSITION_RATES}))


def stage_step_counts(num_steps: int) -> Tuple[int, int, int, int]:
    """The reference's accounting counts (used for the density): the stage advances *before* counting
    a split step. N=50 -> (14, 11, 11, 14)."""
    num_steps = _check_steps(num_steps)
    splits = {int(num_steps * rate) for rate in TRANSITION_RATES}
    counts = [0, 0, 0, 0]
    stage = 0
    for i in range(num_steps):
        if i in splits and stage < NUM_STAGES - 1:
            stage += 1
        counts[stage] += 1
    return tuple(counts)  # type: ignore[return-value]


def executed_model_calls(num_steps: int) -> Tuple[int, int, int, int]:
    """Model calls the sampler really runs per stage: a transition step's call still runs at the old
    stage's size (Q2). N=50 -> (15, 11, 11, 13)."""
    num_steps = _check_steps(num_steps)
    transitions = set(transition_steps(num_steps))
    counts = [0, 0, 0, 0]
    stage = 0
    for i in range(num_steps):
        counts[stage] += 1
        if i in transitions and stage < NUM_STAGES - 1:
            stage += 1
    return tuple(counts)  # type: ignore[return-value]


def density_step_counts(num_steps: int, budget_accounting: str = "reference") -> Tuple[int, int, int, int]:
    """The per-stage step counts the density weighs stages with: `stage_step_counts` ("reference") or
    `executed_model_calls` ("executed", Q2)."""
    check_choice("budget_accounting", budget_accounting, BUDGET_ACCOUNTINGS)
    if budget_accounting == "executed":
        return executed_model_calls(num_steps)
    return stage_step_counts(num_steps)


def stage_of_step(num_steps: int) -> Tuple[int, ...]:
    """(N,) stage whose grid the model call of each step i runs on (the executed-loop rule of §12.2)."""
    num_steps = _check_steps(num_steps)
    transitions = set(transition_steps(num_steps))
    stages, stage = [], 0
    for i in range(num_steps):
        stages.append(stage)
        if i in transitions and stage < NUM_STAGES - 1:
            stage += 1
    return tuple(stages)


def effective_stage_shifts(stage0_shift: float, stage_shifts: Sequence[float] = (7.0, 9.0, 11.0, 11.0)
                           ) -> Tuple[float, float, float, float]:
    """Scheduler shift per stage: stage 0 uses the pipeline's own shift (entry 0 of `stage_shifts` is
    never used, §12.1), stages 1–3 use stage_shifts[1:]."""
    stage0_shift = check_float("stage0_shift", stage0_shift, low=0.0, high=math.inf, low_open=True)
    if len(stage_shifts) != NUM_STAGES:
        fail("stage_shifts", stage_shifts, "four positive numbers")
    rest = tuple(check_float(f"stage_shifts[{k}]", s, low=0.0, high=math.inf, low_open=True)
                 for k, s in enumerate(stage_shifts))
    return (stage0_shift,) + rest[1:]  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Stage shapes and density (§3, §5)
# --------------------------------------------------------------------------------------------------

def _clamp(value: int, low: int, high: int) -> int:
    return low if value < low else high if value > high else value


def joint_stage_shapes(full_shape: Sequence[int], spatial_rates: Sequence[float],
                       temporal_rates: Sequence[float]) -> List[Shape]:
    """(K,) stage shapes (t, h, w) in the units of `full_shape` (§3.1).

    Every stage but the last is (round(T·r_k), round(H·s_k), round(W·s_k)) clamped to [1, full] and
    made non-decreasing over the stages; the last stage is the full shape. Empty rate lists mean [1.0]."""
    T, H, W = (check_int(f"full_shape[{i}]", n, minimum=1) for i, n in enumerate(full_shape))
    spatial = list(spatial_rates) or [1.0]
    temporal = list(temporal_rates) or [1.0]
    if len(spatial) != len(temporal):
        fail("temporal_rates", temporal_rates, f"a list as long as spatial_rates ({len(spatial)})")
    shapes: List[Shape] = []
    prev_t = prev_h = prev_w = 1
    last = len(spatial) - 1
    for k, (s, r) in enumerate(zip(spatial, temporal)):
        if k == last:
            t, h, w = T, H, W
        else:
            t = _clamp(round(T * r), 1, T)
            h = _clamp(round(H * s), 1, H)
            w = _clamp(round(W * s), 1, W)
            t, h, w = max(prev_t, t), max(prev_h, h), max(prev_w, w)
        shapes.append((t, h, w))
        prev_t, prev_h, prev_w = t, h, w
    return shapes


def latent_stage_shape(grid: FullGrid, dvg_shape: Sequence[int]) -> Shape:
    """Latent (t, h, w) of a stage given in DVG units (§3.2). HV floors pixels to whole 16-px tokens:
    (t, (h_px // 16)·2, (w_px // 16)·2); HV-1.5 shapes already are latent."""
    t, h, w = dvg_shape
    if grid.is_hunyuan_video:
        return (t, (h // 16) * 2, (w // 16) * 2)
    return (t, h, w)


def token_stage_shape(grid: FullGrid, dvg_shape: Sequence[int]) -> Shape:
    """Patch-grid (t, h, w) of a stage given in DVG units: HV (t, h_px // 16, w_px // 16); HV-1.5 latent."""
    t, h, w = dvg_shape
    if grid.is_hunyuan_video:
        return (t, h // 16, w // 16)
    return (t, h, w)


def density(stage_shapes: Sequence[Sequence[int]], full_shape: Sequence[int], counts: Sequence[int]) -> float:
    """Σ_k |S_k|·n_k / (|F|·Σ_k n_k) with exact integers and one correctly rounded division (§5)."""
    if len(stage_shapes) != len(counts):
        fail("counts", counts, f"one count per stage ({len(stage_shapes)})")
    numerator = sum(t * h * w * n for (t, h, w), n in zip(stage_shapes, counts))
    T, H, W = full_shape
    denominator = T * H * W * sum(counts)
    if denominator <= 0:
        fail("counts", counts, "non-negative step counts with a positive sum")
    return numerator / denominator


# --------------------------------------------------------------------------------------------------
# Nested coordinate axes (§8)
# --------------------------------------------------------------------------------------------------

def _subset(parent: List[int], target_size: int) -> List[int]:
    length = len(parent)
    if target_size < 1:
        raise ValueError("target_size must be positive.")
    if target_size > length:
        raise ValueError(f"Cannot select {target_size} nested coordinates from superset of size {length}.")
    if target_size == length:
        return list(parent)
    if target_size == 1:
        return [parent[0]]
    last = length - 1
    k_last = target_size - 1
    pos = [round(i * last / k_last) for i in range(target_size)]
    pos[0] = 0
    pos[-1] = last
    for i in range(1, target_size):
        pos[i] = min(max(pos[i], pos[i - 1] + 1), last - (k_last - i))
    return [parent[p] for p in pos]


def nested_axes(final_size: int, stage_sizes: Sequence[int]) -> List[List[int]]:
    """(K,) lists of full-grid coordinates kept at each stage of one axis (§8): the last is
    range(final_size); each earlier one is an evenly spread subset of the next, containing both ends.

    Errors (ValueError) match the reference: a size < 1, a stage larger than the next, or a last stage
    size different from final_size."""
    if isinstance(final_size, bool) or not isinstance(final_size, int) or final_size < 1:
        raise ValueError(f"final_size must be a positive integer, got {final_size!r}.")
    sizes = list(stage_sizes)
    if not sizes:
        fail("stage_sizes", stage_sizes, "a non-empty list of stage sizes ending with final_size")
    for k, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, int):
            fail(f"stage_sizes[{k}]", n, "an integer")
    if sizes[-1] != final_size:
        raise ValueError(f"The last stage size must equal final_size ({sizes[-1]} != {final_size}).")
    axes: List[List[int]] = [list(range(final_size))]
    for n in reversed(sizes[:-1]):
        axes.append(_subset(axes[-1], n))
    axes.reverse()
    return axes


def stage_axes(full_shape: Sequence[int], stage_shapes: Sequence[Sequence[int]]
               ) -> List[Tuple[List[int], List[int], List[int]]]:
    """(K,) per stage (axis_t, axis_h, axis_w): full-grid coordinates kept by that stage, built
    independently per dimension from latent shapes."""
    per_dim = [nested_axes(full_shape[d], [shape[d] for shape in stage_shapes]) for d in range(3)]
    return [(per_dim[0][k], per_dim[1][k], per_dim[2][k]) for k in range(len(stage_shapes))]


# --------------------------------------------------------------------------------------------------
# Candidates, feasibility, scoring (§7)
# --------------------------------------------------------------------------------------------------

def spatial_candidates(start: float = STAGE0_SPATIAL_RATE, step: float = SPATIAL_CANDIDATE_STEP) -> Tuple[float, ...]:
    """Stage-1 spatial rates s2: start, start+step, ... below 1 (running double sum, each recorded
    rounded to 6 decimals), then 1.0. Defaults: (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)."""
    values: List[float] = []
    value = start
    while value < 1.0 - 1e-9:
        values.append(round(value, 6))
        value += step
    if not values or abs(values[-1] - 1.0) > 1e-9:
        values.append(1.0)
    return tuple(values)


_SPATIAL_CANDIDATES = spatial_candidates()


def stage0_frames(latent_frames: int, budget: float) -> int:
    """t1 = clamp(round(T·(budget·0.8)), 1, T): stage-0 latent frames (§3.3, §7.1)."""
    return _clamp(round(latent_frames * (budget * STAGE0_TEMPORAL_FACTOR)), 1, latent_frames)


def demand_split(spatial_demand: float, temporal_demand: float) -> Tuple[float, float]:
    """(m_s, m_t): softmax of α·(S, M) with α = 2.6, two separate divisions (§7.3)."""
    e_s = math.exp(DEMAND_TEMPERATURE * spatial_demand)
    e_t = math.exp(DEMAND_TEMPERATURE * temporal_demand)
    return e_s / (e_s + e_t), e_t / (e_s + e_t)


@dataclass(frozen=True)
class Candidate:
    """One stage-transition action: stage 1 = (t23 frames, spatial rate s2), stage 2 = (t23 frames,
    full size). `density` in DVG units; `score` is None until scored."""

    s2: float
    t23: int
    density: float
    score: Optional[float] = None

    def to_list(self) -> list:
        return [self.s2, self.t23, self.density, self.score]


@functools.lru_cache(maxsize=4096)
def _candidate_table(full_shape: Shape, counts: Tuple[int, ...], t1: int) -> Tuple[Tuple[float, int, float], ...]:
    """All (s2, t23, density) for stage-0 frame count t1, in enumeration order (s2 outer, t23 inner).
    The §3.1 shape rule is inlined (this is the planner's hot loop): stages 0 and 3 are fixed, stage 2 is
    (t, H, W) and stage 1 (t, max(h0, round(H·s2)), max(w0, round(W·s2))) with t = max(t0, round(T·t23/T))."""
    T, H, W = full_shape
    t0, h0, w0 = joint_stage_shapes(full_shape, [STAGE0_SPATIAL_RATE, 1.0], [t1 / T, 1.0])[0]
    n0, n1, n2, n3 = counts
    denominator = T * H * W * sum(counts)
    fixed = t0 * h0 * w0 * n0 + T * H * W * n3
    frames = [(t23, max(t0, _clamp(round(T * (t23 / T)), 1, T))) for t23 in range(t1, T + 1)]
    full_area = H * W * n2
    out = []
    for s2 in _SPATIAL_CANDIDATES:
        per_frame = max(h0, _clamp(round(H * s2), 1, H)) * max(w0, _clamp(round(W * s2), 1, W)) * n1 + full_area
        out.extend((s2, t23, (fixed + t * per_frame) / denominator) for t23, t in frames)
    return tuple(out)


def _gap_ok(d: float, budget: float) -> bool:
    return abs(d - budget) <= DENSITY_TOLERANCE


def feasible_candidates(grid: FullGrid, num_steps: int, budget: float, *,
                        budget_accounting: str = "reference") -> List[Candidate]:
    """Candidates with |density − budget| ≤ 0.02, sorted by (|gap|, −density, −s2, −t23/T) — the
    reference's tie-break order (§7.2). Unscored."""
    _check_grid(grid)
    budget = _check_budget(budget)
    counts = density_step_counts(num_steps, budget_accounting)
    T = grid.dvg_full_shape[0]
    t1 = stage0_frames(T, budget)
    feasible = [Candidate(s2, t23, d) for s2, t23, d in _candidate_table(grid.dvg_full_shape, counts, t1)
                if _gap_ok(d, budget)]
    feasible.sort(key=lambda c: (abs(c.density - budget), -c.density, -c.s2, -(c.t23 / T)))
    return feasible


def score_candidates(candidates: Sequence[Candidate], m_s: float, m_t: float) -> List[Candidate]:
    """The candidates with `score` filled in ("parameter_free_softmax", §7.3): gains normalised over
    the given (feasible) set, score = −λ·(space_gain − m_s)² − (1−λ)·(time_gain − m_t)²."""
    if not candidates:
        return []
    squares = [c.s2 * c.s2 for c in candidates]
    q_min, q_max = min(squares), max(squares)
    f_min = min(c.t23 for c in candidates)
    f_max = max(c.t23 for c in candidates)
    q_den = max(q_max - q_min, 1e-8)
    f_den = max(f_max - f_min, 1)
    out = []
    for c, q in zip(candidates, squares):
        space_gain = (q - q_min) / q_den
        time_gain = (c.t23 - f_min) / f_den
        score = (-DECISION_LAMBDA * (space_gain - m_s) ** 2) + (-(1.0 - DECISION_LAMBDA) * (time_gain - m_t) ** 2)
        out.append(dataclasses.replace(c, score=score))
    return out


def select_candidate(scored: Sequence[Candidate]) -> int:
    """Index of the first candidate (in the given order) with the maximal score (§7.3)."""
    best = 0
    for i in range(1, len(scored)):
        if scored[i].score > scored[best].score:  # type: ignore[operator]
            best = i
    return best


# --------------------------------------------------------------------------------------------------
# Feasible budgets (Q3): exact union of intervals
# --------------------------------------------------------------------------------------------------

def _reference_error_message(budget: float) -> str:
    return (f"No stage-transition action satisfies the density tolerance. budget={budget:.4f}, "
            f"tolerance={DENSITY_TOLERANCE:.4f}.")


def format_intervals(intervals: Sequence[Tuple[float, float]]) -> str:
    """'[0.360162, 0.782903] ∪ (0.77, 0.81)': each edge at 6 decimals, never claiming an infeasible
    budget — a bracket is closed when the printed value is feasible, open when the printed value lies
    just outside (the interval starts at the next double), and otherwise the edge is rounded inward."""
    if not intervals:
        return "(none)"
    return " ∪ ".join(f"{_edge_text(lo, True)}, {_edge_text(hi, False)}" for lo, hi in intervals)


def _edge_text(edge: float, lower: bool) -> str:
    shown = round(edge, 6)
    inward = math.inf if lower else -math.inf
    if shown == edge:
        return f"[{shown!r}" if lower else f"{shown!r}]"
    if (shown < edge) == lower and math.nextafter(shown, inward) == edge:
        return f"({shown!r}" if lower else f"{shown!r})"
    shown = (math.ceil if lower else math.floor)(edge * 1e6) / 1e6
    if (shown < edge) == lower:
        shown = edge
    return f"[{shown!r}" if lower else f"{shown!r}]"


class InfeasibleBudgetError(ValueError):
    """No stage plan has a density within ±0.02 of the budget (Q3). Raised by `check_budget` (before any
    model compute) and by `plan_stages`. The message starts with the reference's wording and states the
    exact feasible budget set for the grid and step count."""

    def __init__(self, grid: FullGrid, num_steps: int, budget: float, intervals: Sequence[Tuple[float, float]],
                 budget_accounting: str = "reference"):
        self.grid = grid
        self.num_steps = num_steps
        self.budget = budget
        self.feasible_intervals = [tuple(iv) for iv in intervals]
        self.budget_accounting = budget_accounting
        self.reference_message = _reference_error_message(budget)
        T, H, W = grid.latent_shape
        where = (f"{grid.model} {grid.pipeline_height_px}x{grid.pipeline_width_px}, {grid.num_frames} frames "
                 f"(latent {T}x{H}x{W}), {num_steps} steps")
        if budget_accounting != "reference":
            where += f", budget_accounting={budget_accounting!r}"
        if self.feasible_intervals:
            tail = (f" budget={budget!r} is infeasible for {where}; feasible budgets: "
                    f"{format_intervals(self.feasible_intervals)}. Pick one, or set budget_fallback='nearest' "
                    f"(CLI: --budget-fallback nearest).")
        else:
            tail = f" No budget in (0, 1] is feasible for {where}."
        super().__init__(self.reference_message + tail)

    def __reduce__(self):
        # Exceptions pickle through self.args (the message); rebuild from the constructor's arguments so
        # the error survives multiprocessing / distributed workers.
        return (type(self), (self.grid, self.num_steps, self.budget, self.feasible_intervals, self.budget_accounting))


def _edge(predicate, guess: float) -> float:
    """Smallest double x >= 0 with predicate(x) True, for a predicate that is monotone (False then True)
    over the non-negative doubles, starting from a close guess. Walks ulp by ulp (the guess is normally
    within a few ulps), then bisects on the bit patterns if the guess was far off."""
    x = max(guess, 0.0)
    if predicate(x):
        for _ in range(64):
            if x == 0.0:
                return x
            y = math.nextafter(x, -math.inf)
            if not predicate(y):
                return x
            x = y
        lo, hi = 0, _bits(x)
        if predicate(0.0):
            return 0.0
    else:
        for _ in range(64):
            x = math.nextafter(x, math.inf)
            if predicate(x):
                return x
        lo, hi = _bits(x), _bits(4.0)
    # invariant: predicate(lo) False, predicate(hi) True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if predicate(_from_bits(mid)):
            hi = mid
        else:
            lo = mid
    return _from_bits(hi)


def _bits(x: float) -> int:
    # For non-negative doubles the IEEE bit pattern, read as an integer, orders like the value.
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<q", b))[0]


def _merge(intervals: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """Union of closed double intervals; touching ones (next lo = the double after hi) are joined."""
    intervals = sorted(intervals)
    merged: List[Tuple[float, float]] = []
    for lo, hi in intervals:
        if merged and lo <= math.nextafter(merged[-1][1], math.inf):
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


@functools.lru_cache(maxsize=512)
def _feasible_budget_intervals(full_shape: Shape, counts: Tuple[int, ...]) -> Tuple[Tuple[float, float], ...]:
    T = full_shape[0]
    min_budget = math.nextafter(0.0, 1.0)
    result: List[Tuple[float, float]] = []
    t1_max = stage0_frames(T, 1.0)
    for t1 in range(1, t1_max + 1):
        # Budgets whose stage 0 has t1 frames: an interval, since b -> round(T·(b·0.8)) is monotone.
        lo = min_budget if t1 == 1 else _edge(lambda b: stage0_frames(T, b) >= t1,
                                              (t1 - 0.5) / (T * STAGE0_TEMPORAL_FACTOR))
        hi = 1.0 if t1 == t1_max else math.nextafter(
            _edge(lambda b: stage0_frames(T, b) >= t1 + 1, (t1 + 0.5) / (T * STAGE0_TEMPORAL_FACTOR)), -math.inf)
        lo, hi = max(lo, min_budget), min(hi, 1.0)
        if lo > hi:
            continue
        # Budgets within the tolerance of one candidate density d: the doubles b with
        # |d − b| <= 0.02 (as computed) form an interval too, with edges within ulps of d ∓ 0.02.
        pieces = []
        for d in sorted({d for _, _, d in _candidate_table(full_shape, counts, t1)}):
            if d + 0.03 < lo or d - 0.03 > hi:
                continue
            d_lo = _edge(lambda b, d=d: d - b <= DENSITY_TOLERANCE, d - DENSITY_TOLERANCE)
            d_hi = math.nextafter(_edge(lambda b, d=d: d - b < -DENSITY_TOLERANCE, d + DENSITY_TOLERANCE),
                                  -math.inf)
            a, b = max(lo, d_lo), min(hi, d_hi)
            if a <= b:
                pieces.append((a, b))
        result.extend(_merge(pieces))
    return tuple(_merge(result))


def feasible_budget_intervals(grid: FullGrid, num_steps: int, budget_accounting: str = "reference"
                              ) -> List[Tuple[float, float]]:
    """The exact set of budgets b in (0, 1] for which some candidate is feasible, as sorted disjoint
    closed intervals [(lo, hi), ...] of doubles: b is feasible iff lo <= b <= hi for one of them.

    For each stage-0 frame count t1 (it moves with the budget: t1 = round(T·0.8·b)), the budgets giving
    t1 are intersected with the budgets within ±0.02 of one of t1's candidate densities, every edge
    found exactly (to the double) with the planner's own arithmetic."""
    _check_grid(grid)
    counts = density_step_counts(num_steps, budget_accounting)
    return [tuple(iv) for iv in _feasible_budget_intervals(grid.dvg_full_shape, counts)]  # type: ignore[misc]


def is_budget_feasible(grid: FullGrid, num_steps: int, budget: float, budget_accounting: str = "reference") -> bool:
    """Whether planning at `budget` finds a feasible candidate (direct check, no intervals)."""
    return bool(feasible_candidates(grid, num_steps, budget, budget_accounting=budget_accounting))


def resolve_budget(grid: FullGrid, num_steps: int, budget: float, *, budget_accounting: str = "reference",
                   budget_fallback: str = "error") -> Tuple[float, Optional[str]]:
    """(budget_used, fallback_note). A feasible budget comes back unchanged with note None. An
    infeasible one raises InfeasibleBudgetError ("error") or is replaced by the nearest feasible budget
    ("nearest"; equal distances go to the larger budget), with a note saying so."""
    _check_grid(grid)
    budget = _check_budget(budget)
    num_steps = _check_steps(num_steps)
    check_choice("budget_fallback", budget_fallback, BUDGET_FALLBACKS)
    counts = density_step_counts(num_steps, budget_accounting)
    if is_budget_feasible(grid, num_steps, budget, budget_accounting):
        return budget, None
    intervals = _feasible_budget_intervals(grid.dvg_full_shape, counts)
    if budget_fallback == "error" or not intervals:
        raise InfeasibleBudgetError(grid, num_steps, budget, intervals, budget_accounting)
    nearest = min((edge for iv in intervals for edge in iv), key=lambda e: (abs(e - budget), -e))
    note = (f"budget {budget!r} is infeasible for this grid and step count; planned with the nearest "
            f"feasible budget {nearest!r} (feasible: {format_intervals(intervals)})")
    return nearest, note


def check_budget(grid: FullGrid, num_steps: int, budget: float, *, budget_accounting: str = "reference",
                 budget_fallback: str = "error") -> float:
    """The budget to plan with; raises InfeasibleBudgetError (before any model compute) when the budget
    is infeasible and budget_fallback is "error". See `resolve_budget`."""
    return resolve_budget(grid, num_steps, budget, budget_accounting=budget_accounting,
                          budget_fallback=budget_fallback)[0]


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------

def _tuple_shapes(shapes: Sequence[Sequence[int]]) -> Tuple[Shape, ...]:
    return tuple(tuple(int(n) for n in s) for s in shapes)  # type: ignore[misc]


@dataclass(frozen=True)
class Plan:
    """A four-stage DVG plan for one sample. `planned` is False for the initial (pre-planning) plan,
    whose stages 1–3 are full size.

    Shapes (4 stages, (t, h, w)): `stage_shapes` latent, `token_shapes` patch grid, `stage_shapes_dvg`
    the units the density is computed in (HV pixels, HV-1.5 latent). `stage_axes[k]` = (axis_t, axis_h,
    axis_w): the full-latent-grid coordinates kept by stage k. `density` in DVG units with the
    `budget_accounting` step counts. `candidates` are the feasible candidates, scored, in the
    reference's tie-break order; `s2`, `t23` the chosen one."""

    grid: FullGrid
    num_steps: int
    budget: float
    budget_used: float
    budget_accounting: str
    planned: bool
    spatial_rates: Tuple[float, ...]
    temporal_rates: Tuple[float, ...]
    stage_shapes_dvg: Tuple[Shape, ...]
    stage_shapes: Tuple[Shape, ...]
    token_shapes: Tuple[Shape, ...]
    stage_axes: Tuple[Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]], ...]
    density: float
    transition_steps: Tuple[int, ...]
    stage_step_counts: Tuple[int, ...]
    executed_model_calls: Tuple[int, ...]
    t1: int
    s2: Optional[float] = None
    t23: Optional[int] = None
    spatial_demand: Optional[float] = None
    temporal_demand: Optional[float] = None
    demands_used: Optional[bool] = None
    m_s: Optional[float] = None
    m_t: Optional[float] = None
    best_score: Optional[float] = None
    candidates: Tuple[Candidate, ...] = ()
    fallback: Optional[str] = None

    # ---- derived views ----
    @property
    def model(self) -> str:
        return self.grid.model

    @property
    def feasible_count(self) -> int:
        return len(self.candidates)

    @property
    def stage_shapes_px(self) -> Tuple[Shape, ...]:
        """Pixel-unit stage shapes (t latent frames, rows, columns in pixels): HV the shapes the density
        is computed on (before 16-px flooring); HV-1.5 latent × 16."""
        if self.grid.is_hunyuan_video:
            return self.stage_shapes_dvg
        return tuple((t, h * 16, w * 16) for t, h, w in self.stage_shapes)

    @property
    def tokens_per_stage(self) -> Tuple[int, ...]:
        return tuple(t * h * w for t, h, w in self.token_shapes)

    @property
    def stage_of_step(self) -> Tuple[int, ...]:
        return stage_of_step(self.num_steps)

    @property
    def token_steps(self) -> int:
        """Latent tokens processed by the model over all executed steps."""
        return sum(n * c for n, c in zip(self.tokens_per_stage, self.executed_model_calls))

    @property
    def full_token_steps(self) -> int:
        t, h, w = self.grid.token_shape
        return t * h * w * self.num_steps

    @property
    def action_id(self) -> Optional[str]:
        if not self.planned:
            return None
        return f"s1s{STAGE0_SPATIAL_RATE:.3f}_s1t{self.t1}_s2s{self.s2}_s23t{self.t23}"

    @property
    def demand_split(self) -> Optional[Dict[str, float]]:
        return None if self.m_s is None else {"m_s": self.m_s, "m_t": self.m_t}

    # ---- serialisation ----
    def to_dict(self) -> dict:
        """JSON-able dict with every field (and the derived views); `Plan.from_dict` inverts it."""
        return {
            "grid": self.grid.to_dict(),
            "num_steps": self.num_steps,
            "budget": self.budget,
            "budget_used": self.budget_used,
            "budget_accounting": self.budget_accounting,
            "fallback": self.fallback,
            "planned": self.planned,
            "spatial_rates": list(self.spatial_rates),
            "temporal_rates": list(self.temporal_rates),
            "stage_shapes": [list(s) for s in self.stage_shapes],
            "token_shapes": [list(s) for s in self.token_shapes],
            "stage_shapes_dvg": [list(s) for s in self.stage_shapes_dvg],
            "stage_shapes_px": [list(s) for s in self.stage_shapes_px],
            "stage_axes": [[list(a) for a in axes] for axes in self.stage_axes],
            "density": self.density,
            "transition_steps": list(self.transition_steps),
            "stage_step_counts": list(self.stage_step_counts),
            "executed_model_calls": list(self.executed_model_calls),
            "tokens_per_stage": list(self.tokens_per_stage),
            "token_steps": self.token_steps,
            "full_token_steps": self.full_token_steps,
            "t1": self.t1,
            "s2": self.s2,
            "t23": self.t23,
            "action_id": self.action_id,
            "spatial_demand": self.spatial_demand,
            "temporal_demand": self.temporal_demand,
            "demands_used": self.demands_used,
            "demand_split": self.demand_split,
            "best_score": self.best_score,
            "feasible_count": self.feasible_count,
            "candidates": [c.to_list() for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        split = data.get("demand_split") or {}
        return cls(
            grid=FullGrid.from_dict(data["grid"]),
            num_steps=data["num_steps"],
            budget=data["budget"],
            budget_used=data["budget_used"],
            budget_accounting=data["budget_accounting"],
            planned=data["planned"],
            spatial_rates=tuple(data["spatial_rates"]),
            temporal_rates=tuple(data["temporal_rates"]),
            stage_shapes_dvg=_tuple_shapes(data["stage_shapes_dvg"]),
            stage_shapes=_tuple_shapes(data["stage_shapes"]),
            token_shapes=_tuple_shapes(data["token_shapes"]),
            stage_axes=tuple(tuple(tuple(a) for a in axes) for axes in data["stage_axes"]),  # type: ignore[misc]
            density=data["density"],
            transition_steps=tuple(data["transition_steps"]),
            stage_step_counts=tuple(data["stage_step_counts"]),
            executed_model_calls=tuple(data["executed_model_calls"]),
            t1=data["t1"],
            s2=data.get("s2"),
            t23=data.get("t23"),
            spatial_demand=data.get("spatial_demand"),
            temporal_demand=data.get("temporal_demand"),
            demands_used=data.get("demands_used"),
            m_s=split.get("m_s"),
            m_t=split.get("m_t"),
            best_score=data.get("best_score"),
            candidates=tuple(Candidate(c[0], c[1], c[2], c[3]) for c in data.get("candidates", [])),
            fallback=data.get("fallback"),
        )

    def reference_outputs(self) -> dict:
        """This plan in the format of `parity/planner.json` `outputs` (the initial-plan keys included).
        HV-only keys (`*token_shapes`, `stage_shapes_px`) are present for HV only."""
        init = self if not self.planned else initial_plan(self.grid, self.num_steps, self.budget_used,
                                                          budget_accounting=self.budget_accounting)
        out = _bookkeeping_outputs(init)
        if not self.planned:
            return out
        is_hv = self.grid.is_hunyuan_video
        out["stage_shapes"] = [list(s) for s in self.stage_shapes]
        if is_hv:
            out["token_shapes"] = [list(s) for s in self.token_shapes]
            out["stage_shapes_px"] = [list(s) for s in self.stage_shapes_dvg]
        out["chosen"] = {"s2": self.s2, "t23": self.t23, "t1": self.t1, "action_id": self.action_id,
                         "spatial_rate_list": list(self.spatial_rates),
                         "temporal_rate_list": list(self.temporal_rates)}
        out["demands_used"] = self.demands_used
        out["feasible_count"] = self.feasible_count
        out["density"] = self.density
        out["selected_real_density"] = self.density
        out["demand_split"] = self.demand_split
        out["best_score"] = self.best_score
        out["candidates"] = [c.to_list() for c in self.candidates]
        out["stage_axes"] = [[list(a) for a in axes] for axes in self.stage_axes]
        return out


def _bookkeeping_outputs(init: Plan) -> dict:
    out = {"initial_stage_shapes": [list(s) for s in init.stage_shapes]}
    if init.grid.is_hunyuan_video:
        out["initial_token_shapes"] = [list(s) for s in init.token_shapes]
    out["initial_density"] = init.density
    out["transition_steps"] = list(init.transition_steps)
    out["stage_step_counts"] = list(init.stage_step_counts)
    out["executed_model_calls_per_stage"] = list(init.executed_model_calls)
    return out


def _check_grid(grid: Any) -> FullGrid:
    if not isinstance(grid, FullGrid):
        fail("grid", grid, "a FullGrid (from dvg_engine.planner.full_grid)", TypeError)
    return grid


def _check_budget(budget: Any) -> float:
    return check_float("budget", budget, low=0.0, high=1.0, low_open=True)


def _build_plan(grid: FullGrid, num_steps: int, budget: float, budget_used: float, budget_accounting: str,
                spatial: List[float], temporal: List[float], t1: int, **extra: Any) -> Plan:
    dvg_shapes = joint_stage_shapes(grid.dvg_full_shape, spatial, temporal)
    latent = [latent_stage_shape(grid, s) for s in dvg_shapes]
    tokens = [token_stage_shape(grid, s) for s in dvg_shapes]
    axes = stage_axes(grid.latent_shape, latent)
    counts = density_step_counts(num_steps, budget_accounting)
    return Plan(
        grid=grid, num_steps=num_steps, budget=budget, budget_used=budget_used,
        budget_accounting=budget_accounting,
        spatial_rates=tuple(spatial), temporal_rates=tuple(temporal),
        stage_shapes_dvg=_tuple_shapes(dvg_shapes), stage_shapes=_tuple_shapes(latent),
        token_shapes=_tuple_shapes(tokens),
        stage_axes=tuple((tuple(a), tuple(b), tuple(c)) for a, b, c in axes),
        density=density(dvg_shapes, grid.dvg_full_shape, counts),
        transition_steps=transition_steps(num_steps), stage_step_counts=stage_step_counts(num_steps),
        executed_model_calls=executed_model_calls(num_steps), t1=t1, **extra)


def initial_plan(grid: FullGrid, num_steps: int, budget: float, *, budget_accounting: str = "reference") -> Plan:
    """The pre-planning plan (§3.3): spatial [0.5, 1, 1, 1], temporal [0.8·budget, 1, 1, 1] — stage 0 is
    what the sampler starts on; stages 1–3 are full until `plan_stages` replaces stages 1 and 2.
    No feasibility check: use `check_budget` first to fail (or fall back) before any compute."""
    _check_grid(grid)
    budget = _check_budget(budget)
    num_steps = _check_steps(num_steps)
    check_choice("budget_accounting", budget_accounting, BUDGET_ACCOUNTINGS)
    T = grid.dvg_full_shape[0]
    return _build_plan(grid, num_steps, budget, budget, budget_accounting,
                       [STAGE0_SPATIAL_RATE, 1.0, 1.0, 1.0], [budget * STAGE0_TEMPORAL_FACTOR, 1.0, 1.0, 1.0],
                       stage0_frames(T, budget), planned=False)


def plan_stages(grid: FullGrid, num_steps: int, budget: float, spatial_demand: float, temporal_demand: float, *,
                budget_accounting: str = "reference", budget_fallback: str = "error") -> Plan:
    """The DVG plan for demands S = `spatial_demand` (high-band energy fraction) and M =
    `temporal_demand` (bounded flow, f/(1+f)), both in [0, 1] (§7).

    When stage 0 has fewer than 2 latent frames the demands are ignored (S = M = 0, 50/50 split,
    `demands_used=False`), as in the reference. An infeasible budget raises InfeasibleBudgetError
    (`budget_fallback="error"`) or plans with the nearest feasible budget (`"nearest"`)."""
    _check_grid(grid)
    budget = _check_budget(budget)
    num_steps = _check_steps(num_steps)
    spatial_demand = check_float("spatial_demand", spatial_demand, low=0.0, high=1.0)
    temporal_demand = check_float("temporal_demand", temporal_demand, low=0.0, high=1.0)
    check_choice("budget_accounting", budget_accounting, BUDGET_ACCOUNTINGS)
    budget_used, note = resolve_budget(grid, num_steps, budget, budget_accounting=budget_accounting,
                                       budget_fallback=budget_fallback)
    T = grid.dvg_full_shape[0]
    t1 = stage0_frames(T, budget_used)
    demands_used = t1 >= 2
    if not demands_used:
        spatial_demand = temporal_demand = 0.0
    m_s, m_t = demand_split(spatial_demand, temporal_demand)
    scored = score_candidates(feasible_candidates(grid, num_steps, budget_used, budget_accounting=budget_accounting),
                              m_s, m_t)
    chosen = scored[select_candidate(scored)]
    return _build_plan(grid, num_steps, budget, budget_used, budget_accounting,
                       [STAGE0_SPATIAL_RATE, chosen.s2, 1.0, 1.0], [t1 / T, chosen.t23 / T, chosen.t23 / T, 1.0], t1,
                       planned=True, s2=chosen.s2, t23=chosen.t23, spatial_demand=spatial_demand,
                       temporal_demand=temporal_demand, demands_used=demands_used, m_s=m_s, m_t=m_t,
                       best_score=chosen.score, candidates=tuple(scored), fallback=note)


def check_x0_shape(grid: FullGrid, num_steps: int, budget: float, x0: Any, *,
                   budget_accounting: str = "reference") -> None:
    """x0 must be (B, latent_channels, t0, h0, w0) with (t0, h0, w0) the initial plan's stage-0 latent
    shape at this (already resolved) budget: the x̂0 the sampler has at the first transition."""
    expected = initial_plan(grid, num_steps, budget, budget_accounting=budget_accounting).stage_shapes[0]
    shape = tuple(getattr(x0, "shape", ()))
    if len(shape) != 5 or shape[1] != grid.latent_channels or tuple(shape[2:]) != expected:
        fail("x0", x0, f"shape (B, {grid.latent_channels}, {expected[0]}, {expected[1]}, {expected[2]}) "
                       f"(the stage-0 latent grid of this plan)")


def plans_from_demands(grid: FullGrid, num_steps: int, budget: float, demands: Sequence[Any], *,
                       budget_accounting: str = "reference", budget_fallback: str = "error") -> List[Plan]:
    """(B,) plans, one per `Demands` (dvg_engine.demands); equal demands share one Plan object. The
    demands are clamped into [0, 1] (f32 rounding can put S a hair outside)."""
    cache: Dict[Any, Plan] = {}
    out = []
    for d in demands:
        key = (d.S, d.M)
        if key not in cache:
            cache[key] = plan_stages(grid, num_steps, budget, min(max(d.S, 0.0), 1.0), min(max(d.M, 0.0), 1.0),
                                     budget_accounting=budget_accounting, budget_fallback=budget_fallback)
        out.append(cache[key])
    return out


def plan_from_x0(grid: FullGrid, num_steps: int, budget: float, x0: Any, *, plan_scope: str = "sample",
                 budget_accounting: str = "reference", budget_fallback: str = "error",
                 check_shape: bool = True) -> List[Plan]:
    """(B,) plans from the clean-latent prediction x0: (B, C, t0, h0, w0) on the stage-0 grid.

    plan_scope "sample": one plan per sample from its own demands (the reference for B = 1); "batch":
    the demands pool the batch as the reference does and every sample gets the same plan. One
    device-to-host read (the demands). With `check_shape` (see `check_x0_shape`) x0 must be on the
    stage-0 latent grid of this plan."""
    from .demands import compute_demands
    check_choice("plan_scope", plan_scope, PLAN_SCOPES)
    budget_used, _ = resolve_budget(grid, num_steps, budget, budget_accounting=budget_accounting,
                                    budget_fallback=budget_fallback)
    if check_shape:
        check_x0_shape(grid, num_steps, budget_used, x0, budget_accounting=budget_accounting)
    return plans_from_demands(grid, num_steps, budget, compute_demands(x0, plan_scope=plan_scope),
                              budget_accounting=budget_accounting, budget_fallback=budget_fallback)


# --------------------------------------------------------------------------------------------------
# planner.json-style cases (the `dvg plan --cases` format)
# --------------------------------------------------------------------------------------------------

CASE_INPUT_KEYS = ("model", "height_px", "width_px", "num_frames", "num_steps", "budget", "spatial_demand",
                   "temporal_demand")


def grid_from_inputs(inputs: dict) -> FullGrid:
    """The FullGrid of a `parity/planner.json` `inputs` object; the optional derived keys
    (pipeline_*_px, latent_shape, dvg_full_shape) must agree with it when present."""
    if not isinstance(inputs, dict):
        fail("inputs", inputs, "a JSON object with keys " + ", ".join(CASE_INPUT_KEYS), TypeError)
    missing = [k for k in CASE_INPUT_KEYS if k not in inputs]
    if missing:
        fail("inputs", inputs, f"an object with keys {', '.join(CASE_INPUT_KEYS)} (missing {', '.join(missing)})")
    grid = full_grid(inputs["model"], inputs["height_px"], inputs["width_px"], inputs["num_frames"])
    for key in ("pipeline_height_px", "pipeline_width_px", "latent_shape", "dvg_full_shape"):
        if key in inputs and _as_tuple(inputs[key]) != _as_tuple(getattr(grid, key)):
            fail(f"inputs.{key}", inputs[key], f"{list(_as_tuple(getattr(grid, key)))!r} for these inputs")
    return grid


def case_outputs(inputs: dict, *, budget_accounting: str = "reference", budget_fallback: str = "error") -> dict:
    """The `outputs` object of `parity/planner.json` for one `inputs` object. An infeasible budget gives
    the reference's `error` and `error_where` (plus our `feasible_budgets` intervals) instead of raising."""
    grid = grid_from_inputs(inputs)
    budget = _check_budget(inputs["budget"])
    num_steps = _check_steps(inputs["num_steps"])
    try:
        plan = plan_stages(grid, num_steps, budget, inputs["spatial_demand"], inputs["temporal_demand"],
                           budget_accounting=budget_accounting, budget_fallback=budget_fallback)
    except InfeasibleBudgetError as exc:
        out = _bookkeeping_outputs(initial_plan(grid, num_steps, budget, budget_accounting=budget_accounting))
        out["error"] = exc.reference_message
        out["error_where"] = _ERROR_WHERE
        out["feasible_budgets"] = [list(iv) for iv in exc.feasible_intervals]
        return out
    out = plan.reference_outputs()
    if plan.fallback is not None:
        out["budget_used"] = plan.budget_used
        out["fallback"] = plan.fallback
    return out
