"""Unit and property tests of dvg_engine.planner: the spec's worked numbers, every option, every error,
the exact feasible-budget set against a brute-force scan, and invariants under random inputs."""
import json
import math
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvg_engine import planner as P

HV, HV15 = "hunyuan_video", "hunyuan_video_1_5"


# ---------------------------------------------------------------------------------------------- grids

def test_canonical_model_accepts_both_spellings():
    assert P.canonical_model("hunyuan-video") == HV == P.canonical_model("hunyuan_video")
    assert P.canonical_model("hunyuan-video-1.5") == HV15 == P.canonical_model("hunyuan_video_1_5")


@pytest.mark.parametrize("bad", ["hunyuanvideo", "wan", "", None, 3])
def test_canonical_model_rejects_unknown(bad):
    with pytest.raises(ValueError, match=r"model=.*allowed: .*hunyuan-video"):
        P.canonical_model(bad)


@pytest.mark.parametrize("model,h,w,f,latent,dvg,pipe", [
    (HV, 720, 1280, 121, (31, 90, 160), (31, 720, 1280), (720, 1280)),
    (HV, 540, 960, 129, (33, 68, 120), (33, 544, 960), (544, 960)),   # 540 rounds up to 544
    (HV, 368, 640, 1, (1, 46, 80), (1, 368, 640), (368, 640)),
    (HV15, 480, 848, 121, (31, 30, 53), (31, 30, 53), (480, 848)),
    (HV15, 720, 1280, 129, (33, 45, 80), (33, 45, 80), (720, 1280)),
    (HV15, 500, 850, 5, (2, 31, 53), (2, 31, 53), (500, 850)),       # HV-1.5 floors pixels // 16
])
def test_full_grid(model, h, w, f, latent, dvg, pipe):
    g = P.full_grid(model, h, w, f)
    assert g.latent_shape == latent and g.dvg_full_shape == dvg
    assert (g.pipeline_height_px, g.pipeline_width_px) == pipe
    assert g.patch == ((1, 2, 2) if model == HV else (1, 1, 1))
    assert g.latent_channels == (16 if model == HV else 32)
    assert g.token_shape == tuple(n // p for n, p in zip(latent, g.patch))


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_frames=30), "num_frames"), (dict(num_frames=0), "num_frames"), (dict(num_frames=2.5), "num_frames"),
    (dict(height=16), "height"), (dict(width=0), "width"), (dict(height="720"), "height"),
])
def test_full_grid_rejects_bad_sizes(kwargs, name):
    args = dict(model=HV, height=720, width=1280, num_frames=121)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{name}=.*allowed"):
        P.full_grid(**args)


def test_full_grid_hv15_minimum_and_round_num_frames():
    with pytest.raises(ValueError, match="height=15"):
        P.full_grid(HV15, 15, 848, 33)
    assert P.full_grid(HV, 720, 1280, 30, round_num_frames=True).num_frames == 29
    assert P.full_grid(HV, 720, 1280, 30, round_num_frames=True).latent_shape[0] == 8


# ------------------------------------------------------------------------------------- bookkeeping

@pytest.mark.parametrize("n,steps,counts,executed", [
    (50, (14, 25, 36), (14, 11, 11, 14), (15, 11, 11, 13)),
    (30, (8, 15, 21), (8, 7, 6, 9), (9, 7, 6, 8)),
    (12, (3, 6, 8), (3, 3, 2, 4), (4, 3, 2, 3)),
    (5, (1, 2, 3), (1, 1, 1, 2), (2, 1, 1, 1)),
    (4, (1, 2), (1, 1, 2, 0), (2, 1, 1, 0)),   # Q6: only two transitions
])
def test_step_bookkeeping(n, steps, counts, executed):
    assert P.transition_steps(n) == steps
    assert P.stage_step_counts(n) == counts
    assert P.executed_model_calls(n) == executed
    assert sum(P.stage_step_counts(n)) == sum(P.executed_model_calls(n)) == n
    assert P.density_step_counts(n, "executed") == executed
    assert [P.stage_of_step(n).count(k) for k in range(4)] == list(executed)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "50", True])
def test_num_steps_validation(bad):
    with pytest.raises(ValueError, match="num_steps="):
        P.transition_steps(bad)


def test_effective_stage_shifts():
    assert P.effective_stage_shifts(5.0) == (5.0, 9.0, 11.0, 11.0)
    with pytest.raises(ValueError, match="stage0_shift"):
        P.effective_stage_shifts(0.0)
    with pytest.raises(ValueError, match="stage_shifts"):
        P.effective_stage_shifts(7.0, (7.0, 9.0))


# ---------------------------------------------------------------------------------- shapes, density

def test_joint_stage_shapes_ties_and_float_products():
    # HV-1.5 480p stage 0: round(53·0.5) = round(26.5) = 26 (banker's); 720·0.7 = 503.999… -> 504.
    shapes = P.joint_stage_shapes((31, 30, 53), [0.5, 1.0, 1.0, 1.0], [0.4, 1.0, 1.0, 1.0])
    assert shapes[0] == (12, 15, 26)
    assert P.joint_stage_shapes((31, 720, 1280), [0.5, 0.7, 1, 1], [0.4, 0.5, 0.5, 1])[1][1] == 504


def test_joint_stage_shapes_monotone_and_empty_lists():
    shapes = P.joint_stage_shapes((31, 90, 160), [0.9, 0.5, 1.0], [0.9, 0.2, 1.0])
    assert shapes == [(28, 81, 144), (28, 81, 144), (31, 90, 160)]
    assert P.joint_stage_shapes((5, 6, 7), [], []) == [(5, 6, 7)]
    with pytest.raises(ValueError, match="temporal_rates"):
        P.joint_stage_shapes((5, 6, 7), [0.5, 1.0], [1.0])


def test_hv_latent_and_token_conversion():
    g = P.full_grid(HV, 720, 1280, 121)
    assert P.latent_stage_shape(g, (12, 360, 640)) == (12, 44, 80)     # 22 tokens -> 44 rows, not 45
    assert P.latent_stage_shape(g, (12, 504, 896)) == (12, 62, 112)
    assert P.latent_stage_shape(g, (31, 720, 1280)) == (31, 90, 160)
    assert P.token_stage_shape(g, (12, 360, 640)) == (12, 22, 40)
    g15 = P.full_grid(HV15, 480, 848, 121)
    assert P.latent_stage_shape(g15, (12, 15, 26)) == P.token_stage_shape(g15, (12, 15, 26)) == (12, 15, 26)


def test_initial_plan_density_matches_spec():
    plan = P.initial_plan(P.full_grid(HV, 720, 1280, 121), 50, 0.5)
    assert plan.density == 0.7470967741935484
    assert plan.stage_shapes == ((12, 44, 80), (31, 90, 160), (31, 90, 160), (31, 90, 160))
    assert not plan.planned and plan.action_id is None and plan.candidates == ()
    assert plan.t1 == 12 and plan.temporal_rates[0] == 0.5 * 0.8


def test_density_is_one_exact_division():
    shapes = [(12, 360, 640), (22, 432, 768), (22, 720, 1280), (31, 720, 1280)]
    num = sum(t * h * w * n for (t, h, w), n in zip(shapes, (14, 11, 11, 14)))
    assert P.density(shapes, (31, 720, 1280), (14, 11, 11, 14)) == num / (31 * 720 * 1280 * 50)
    assert P.density(shapes, (31, 720, 1280), (14, 11, 11, 14)) == 0.5194322580645161
    with pytest.raises(ValueError, match="counts"):
        P.density(shapes, (31, 720, 1280), (14, 11, 11))


# ------------------------------------------------------------------------------------- planning

@pytest.mark.parametrize("S,M,m_s,choice,shapes,dens", [
    (0.02, 0.8, 0.11629, (0.6, 22), [(12, 44, 80), (22, 54, 96), (22, 90, 160), (31, 90, 160)], 0.5194322580645161),
    (0.5, 0.05, 0.76315, (0.9, 15), [(12, 44, 80), (15, 80, 144), (15, 90, 160), (31, 90, 160)], 0.4997741935483871),
    (0.3, 0.3, 0.5, (0.8, 18), [(12, 44, 80), (18, 72, 128), (18, 90, 160), (31, 90, 160)], 0.5165935483870968),
])
def test_spec_worked_examples(S, M, m_s, choice, shapes, dens):
    plan = P.plan_stages(P.full_grid(HV, 720, 1280, 121), 50, 0.5, S, M)
    assert plan.feasible_count == 22
    assert abs(plan.m_s - m_s) < 5e-6 and plan.m_s + plan.m_t == pytest.approx(1.0, abs=1e-15)
    assert (plan.s2, plan.t23) == choice
    assert list(plan.stage_shapes) == shapes
    assert plan.density == dens
    assert plan.spatial_rates == (0.5, choice[0], 1.0, 1.0)
    assert plan.temporal_rates == (12 / 31, choice[1] / 31, choice[1] / 31, 1.0)
    assert plan.action_id == f"s1s0.500_s1t12_s2s{choice[0]}_s23t{choice[1]}"


def test_spatial_candidates():
    assert P.spatial_candidates() == (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert P.spatial_candidates(0.95) == (0.95, 1.0)


def test_selection_is_first_max_in_tie_break_order():
    # S = M gives symmetric targets: exact score ties must resolve to the earliest candidate in order.
    plan = P.plan_stages(P.full_grid(HV15, 480, 848, 121), 12, 0.5, 0.3, 0.3)
    scores = [c.score for c in plan.candidates]
    first_best = scores.index(max(scores))
    assert plan.best_score == max(scores)
    assert (plan.s2, plan.t23) == (plan.candidates[first_best].s2, plan.candidates[first_best].t23)


def test_demands_ignored_when_stage0_has_one_frame():
    grid = P.full_grid(HV15, 480, 848, 5)             # T = 2 latent frames, t1 = round(0.8) = 1
    a = P.plan_stages(grid, 50, 0.5, 1.0, 0.0)
    b = P.plan_stages(grid, 50, 0.5, 0.0, 1.0)
    assert a.t1 == 1 and a.demands_used is False and (a.spatial_demand, a.temporal_demand) == (0.0, 0.0)
    assert (a.m_s, a.m_t) == (0.5, 0.5)
    assert (a.s2, a.t23) == (b.s2, b.t23)
    used = P.plan_stages(P.full_grid(HV15, 480, 848, 121), 50, 0.5, 1.0, 0.0)
    assert used.demands_used is True and used.spatial_demand == 1.0


@pytest.mark.parametrize("name,value", [("budget", 0.0), ("budget", 1.01), ("budget", float("nan")),
                                        ("budget", "0.5"), ("spatial_demand", -0.1), ("spatial_demand", 1.5),
                                        ("temporal_demand", float("inf")), ("temporal_demand", None)])
def test_plan_stages_validation(name, value):
    args = dict(budget=0.5, spatial_demand=0.3, temporal_demand=0.3)
    args[name] = value
    with pytest.raises(ValueError, match=rf"^{name}=.*allowed: a number in"):
        P.plan_stages(P.full_grid(HV, 720, 1280, 121), 50, args["budget"], args["spatial_demand"],
                      args["temporal_demand"])


def test_plan_stages_rejects_bad_options_and_grid():
    grid = P.full_grid(HV, 720, 1280, 121)
    with pytest.raises(ValueError, match="budget_accounting='exact'"):
        P.plan_stages(grid, 50, 0.5, 0.3, 0.3, budget_accounting="exact")
    with pytest.raises(ValueError, match="budget_fallback='closest'"):
        P.plan_stages(grid, 50, 0.5, 0.3, 0.3, budget_fallback="closest")
    with pytest.raises(TypeError, match="grid=.*FullGrid"):
        P.plan_stages((31, 720, 1280), 50, 0.5, 0.3, 0.3)


def test_budget_accounting_executed_uses_model_calls():
    grid = P.full_grid(HV, 720, 1280, 121)
    ref = P.plan_stages(grid, 50, 0.5, 0.3, 0.3)
    exe = P.plan_stages(grid, 50, 0.5, 0.3, 0.3, budget_accounting="executed")
    assert exe.budget_accounting == "executed"
    assert exe.density == P.density(exe.stage_shapes_dvg, grid.dvg_full_shape, (15, 11, 11, 13))
    assert ref.density == P.density(ref.stage_shapes_dvg, grid.dvg_full_shape, (14, 11, 11, 14))
    # One stage-3 step is really a stage-0 step: the executed density of the same stages is lower.
    assert P.density(ref.stage_shapes_dvg, grid.dvg_full_shape, (15, 11, 11, 13)) < ref.density
    assert all(abs(c.density - 0.5) <= 0.02 for c in exe.candidates)
    assert P.feasible_budget_intervals(grid, 50, "executed") != P.feasible_budget_intervals(grid, 50)


def test_small_step_counts_plan_like_the_reference():
    plan = P.plan_stages(P.full_grid(HV15, 480, 848, 121), 4, 0.5, 0.2, 0.4)
    assert plan.transition_steps == (1, 2) and plan.stage_step_counts == (1, 1, 2, 0)
    assert plan.executed_model_calls == (2, 1, 1, 0)


# --------------------------------------------------------------------------- infeasible budgets (Q3)

def test_infeasible_budget_error_states_feasible_set():
    grid = P.full_grid(HV, 720, 1280, 121)
    intervals = P.feasible_budget_intervals(grid, 50)
    with pytest.raises(P.InfeasibleBudgetError) as info:
        P.check_budget(grid, 50, 0.3)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith("No stage-transition action satisfies the density tolerance. budget=0.3000, "
                               "tolerance=0.0200.")
    assert err.reference_message == "No stage-transition action satisfies the density tolerance. budget=0.3000, " \
                                    "tolerance=0.0200."
    assert P.format_intervals(intervals) in str(err) and "720x1280" in str(err) and "50 steps" in str(err)
    assert err.feasible_intervals == intervals and err.budget == 0.3
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.feasible_intervals == intervals
    with pytest.raises(P.InfeasibleBudgetError):
        P.plan_stages(grid, 50, 0.3, 0.3, 0.3)
    assert P.check_budget(grid, 50, 0.5) == 0.5


def test_nearest_fallback_plans_at_the_nearest_feasible_budget():
    grid = P.full_grid(HV, 720, 1280, 121)
    intervals = P.feasible_budget_intervals(grid, 50)
    for budget in (0.3, 0.9, 1.0):
        used, note = P.resolve_budget(grid, 50, budget, budget_fallback="nearest")
        edges = [e for iv in intervals for e in iv]
        assert used in edges and abs(used - budget) == min(abs(e - budget) for e in edges)
        assert note and repr(budget) in note and repr(used) in note
        plan = P.plan_stages(grid, 50, budget, 0.3, 0.3, budget_fallback="nearest")
        assert plan.budget == budget and plan.budget_used == used and plan.fallback == note
        direct = P.plan_stages(grid, 50, used, 0.3, 0.3)
        assert (plan.stage_shapes, plan.density, plan.candidates) == (direct.stage_shapes, direct.density,
                                                                      direct.candidates)
        assert abs(plan.density - used) <= P.DENSITY_TOLERANCE
    feasible = P.plan_stages(grid, 50, 0.5, 0.3, 0.3, budget_fallback="nearest")
    assert feasible.fallback is None and feasible.budget_used == 0.5


def test_format_intervals_never_shows_an_infeasible_budget():
    text = P.format_intervals([(0.6050000000000001, 0.7681999999999999), (0.77, 0.8099999999999999)])
    assert text == "(0.605, 0.7682) ∪ [0.77, 0.81)"
    assert P.format_intervals([(0.3601615, 0.7829034)]) == "[0.360162, 0.782903]"
    assert P.format_intervals([]) == "(none)"


def _scan_budgets(intervals, step=2000):
    budgets = [i / step for i in range(1, step + 1)]
    for lo, hi in intervals:
        budgets += [lo, hi, math.nextafter(lo, 0.0), math.nextafter(hi, 2.0)]
    return [b for b in budgets if 0.0 < b <= 1.0]


@pytest.mark.parametrize("model,h,w,f,n,accounting", [
    (HV, 720, 1280, 121, 50, "reference"), (HV, 720, 1280, 129, 50, "reference"),
    (HV, 368, 640, 33, 12, "executed"), (HV15, 480, 848, 33, 12, "reference"),
    (HV15, 480, 848, 5, 4, "reference"), (HV, 720, 1280, 1, 30, "executed"), (HV15, 720, 1280, 61, 7, "reference"), (HV15, 368, 640, 129, 2, "reference"),
])
def test_feasible_budget_intervals_match_brute_force(model, h, w, f, n, accounting):
    grid = P.full_grid(model, h, w, f)
    intervals = P.feasible_budget_intervals(grid, n, accounting)
    assert intervals == sorted(intervals)
    assert all(0.0 < lo <= hi <= 1.0 for lo, hi in intervals)
    assert all(math.nextafter(a[1], 2.0) < b[0] for a, b in zip(intervals, intervals[1:]))  # disjoint, not touching
    for budget in _scan_budgets(intervals):
        inside = any(lo <= budget <= hi for lo, hi in intervals)
        assert inside == P.is_budget_feasible(grid, n, budget, accounting), budget
    # Edges are exact: the double just outside each interval is infeasible.
    for lo, hi in intervals:
        assert P.is_budget_feasible(grid, n, lo, accounting) and P.is_budget_feasible(grid, n, hi, accounting)
        below, above = math.nextafter(lo, 0.0), math.nextafter(hi, 2.0)
        assert below <= 0.0 or not P.is_budget_feasible(grid, n, below, accounting)
        assert above > 1.0 or not P.is_budget_feasible(grid, n, above, accounting)


def test_feasible_set_has_gaps_and_moves_with_t1():
    # 129 frames at N = 50: budgets ~0.36–0.3645 fall between two stage-0 frame counts' candidate sets.
    intervals = P.feasible_budget_intervals(P.full_grid(HV, 720, 1280, 129), 50)
    assert len(intervals) >= 2


# ---------------------------------------------------------------------------------- serialisation

def test_plan_to_dict_is_json_and_round_trips():
    grid = P.full_grid(HV, 544, 960, 61)
    for plan in (P.plan_stages(grid, 30, 0.55, 0.15, 0.6), P.initial_plan(grid, 30, 0.55),
                 P.plan_stages(grid, 30, 0.95, 0.15, 0.6, budget_fallback="nearest")):
        data = json.loads(json.dumps(plan.to_dict()))
        assert P.Plan.from_dict(data) == plan
        assert data["tokens_per_stage"] == [t * h * w for t, h, w in plan.token_shapes]
        assert data["stage_shapes_px"] == [list(s) for s in plan.stage_shapes_dvg]


def test_plan_derived_views_hv15():
    plan = P.plan_stages(P.full_grid(HV15, 480, 848, 121), 50, 0.5, 0.3, 0.3)
    assert plan.stage_shapes_px[3] == (31, 480, 848)
    assert plan.token_shapes == plan.stage_shapes
    assert plan.token_steps == sum(t * h * w * c for (t, h, w), c in zip(plan.stage_shapes, (15, 11, 11, 13)))
    assert plan.full_token_steps == 31 * 30 * 53 * 50
    outputs = plan.reference_outputs()
    assert "token_shapes" not in outputs and "stage_shapes_px" not in outputs


def test_case_outputs_validates_inputs():
    inputs = dict(model=HV, height_px=720, width_px=1280, num_frames=121, num_steps=50, budget=0.5,
                  spatial_demand=0.3, temporal_demand=0.3)
    assert P.case_outputs(inputs)["chosen"]["s2"] == 0.8
    with pytest.raises(ValueError, match="missing budget"):
        P.case_outputs({k: v for k, v in inputs.items() if k != "budget"})
    with pytest.raises(ValueError, match=r"inputs.latent_shape=\[31, 90, 161\]"):
        P.case_outputs(dict(inputs, latent_shape=[31, 90, 161]))
    err = P.case_outputs(dict(inputs, budget=0.3))
    assert err["error"].startswith("No stage-transition") and err["feasible_budgets"]
    assert "stage_shapes" not in err


# ------------------------------------------------------------------------------------ nested axes

@pytest.mark.parametrize("final,sizes,message", [
    (5, [6, 5], "Cannot select 6 nested coordinates from superset of size 5."),
    (5, [0, 5], "target_size must be positive"),
    (5, [2, 4], "The last stage size must equal final_size"),
    (0, [0], "final_size must be a positive integer"),
])
def test_nested_axes_errors(final, sizes, message):
    with pytest.raises(ValueError, match=message):
        P.nested_axes(final, sizes)


def test_nested_axes_banker_tie():
    assert P.nested_axes(6, [3, 6])[0] == [0, 2, 5]          # round(2.5) = 2
    assert P.nested_axes(7, [1, 7])[0] == [0]


@st.composite
def _axis_chain(draw):
    final = draw(st.integers(1, 200))
    sizes = sorted(draw(st.lists(st.integers(1, final), min_size=0, max_size=4))) + [final]
    return final, sizes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_axis_chain())
def test_property_nested_axes_are_nested_subsets_with_both_ends(chain):
    final, sizes = chain
    axes = P.nested_axes(final, sizes)
    assert axes[-1] == list(range(final))
    for k, (axis, size) in enumerate(zip(axes, sizes)):
        assert len(axis) == size
        assert axis == sorted(set(axis))
        assert axis[0] == 0
        if size >= 2:
            assert axis[-1] == final - 1
        if k + 1 < len(axes):
            assert set(axis) <= set(axes[k + 1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from([HV, HV15]), h=st.integers(32, 1300), w=st.integers(32, 1300),
       frames=st.integers(0, 33).map(lambda k: 4 * k + 1), n=st.integers(4, 80),
       budget=st.floats(0.05, 1.0), S=st.floats(0, 1), M=st.floats(0, 1),
       accounting=st.sampled_from(P.BUDGET_ACCOUNTINGS))
def test_property_feasible_candidates_and_selection(model, h, w, frames, n, budget, S, M, accounting):
    grid = P.full_grid(model, h, w, frames)
    intervals = P.feasible_budget_intervals(grid, n, accounting)
    feasible = any(lo <= budget <= hi for lo, hi in intervals)
    assert feasible == P.is_budget_feasible(grid, n, budget, accounting)
    if not feasible:
        with pytest.raises(P.InfeasibleBudgetError):
            P.plan_stages(grid, n, budget, S, M, budget_accounting=accounting)
        return
    plan = P.plan_stages(grid, n, budget, S, M, budget_accounting=accounting)
    T = grid.dvg_full_shape[0]
    keys = [(abs(c.density - budget), -c.density, -c.s2, -(c.t23 / T)) for c in plan.candidates]
    assert keys == sorted(keys)
    assert all(abs(c.density - budget) <= P.DENSITY_TOLERANCE for c in plan.candidates)
    assert plan.best_score == max(c.score for c in plan.candidates)
    assert abs(plan.density - budget) <= P.DENSITY_TOLERANCE
    # Stages grow monotonically, end at the full grid, and the axes have the stage sizes.
    for a, b in zip(plan.stage_shapes, plan.stage_shapes[1:]):
        assert all(x <= y for x, y in zip(a, b))
    assert plan.stage_shapes[3] == grid.latent_shape
    for shape, axes in zip(plan.stage_shapes, plan.stage_axes):
        assert tuple(len(a) for a in axes) == shape
