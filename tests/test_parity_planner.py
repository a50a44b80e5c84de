"""Parity: every case of parity/planner.json and parity/axes.json, exact (integers and doubles).

Each test checks all cases of its file and asserts that the number checked equals the number in the
file, so a truncated or extended vector file cannot pass silently."""
import json

import pytest

from dvg_engine import planner as P


def _load(parity_path, name):
    with open(parity_path / name, encoding="utf-8") as fh:
        cases = json.load(fh)
    assert isinstance(cases, list) and cases, f"{name} holds no cases"
    return cases


def _first_difference(expected, actual, path="outputs"):
    """Path and both values of the first difference (exact: floats compared with ==)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return path, expected, actual
        for key, value in expected.items():
            if key not in actual:
                return f"{path}.{key}", value, "<missing>"
            diff = _first_difference(value, actual[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(expected, list):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return path, expected, actual
        for i, (e, a) in enumerate(zip(expected, actual)):
            diff = _first_difference(e, a, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if type(expected) is float or type(actual) is float:
        same = isinstance(actual, (int, float)) and not isinstance(actual, bool) and float(actual) == expected
        return None if same else (path, expected, actual)
    return None if expected == actual and type(expected) is type(actual) else (path, expected, actual)


def test_planner_parity_every_case(parity_path):
    cases = _load(parity_path, "planner.json")
    checked, failures = 0, []
    for index, case in enumerate(cases):
        inputs, expected = case["inputs"], case["outputs"]
        actual = P.case_outputs(inputs)
        diff = _first_difference(expected, actual)
        # Error and success must not be mixed up in either direction (the expected side may lack a key).
        if diff is None and ("error" in actual) != ("error" in expected):
            diff = ("outputs.error", expected.get("error"), actual.get("error"))
        if diff is None and "error" not in expected:
            extra = {"stage_shapes", "chosen", "candidates", "density"} - set(actual)
            if extra:
                diff = ("outputs", "keys", f"missing {sorted(extra)}")
        if diff:
            failures.append(f"case {index} ({case['tag']}, {inputs['model']} {inputs['height_px']}x"
                            f"{inputs['width_px']}x{inputs['num_frames']}f N={inputs['num_steps']} "
                            f"B={inputs['budget']} S={inputs['spatial_demand']} M={inputs['temporal_demand']}): "
                            f"{diff[0]} expected {diff[1]!r} got {diff[2]!r}")
        checked += 1
    assert checked == len(cases)
    assert not failures, f"{len(failures)} of {len(cases)} planner cases differ:\n" + "\n".join(failures[:10])


def test_planner_parity_full_grid_inputs(parity_path):
    """The derived input keys (pipeline size, latent shape, DVG shape) follow from the requested size."""
    cases = _load(parity_path, "planner.json")
    checked = 0
    for case in cases:
        inputs = case["inputs"]
        grid = P.full_grid(inputs["model"], inputs["height_px"], inputs["width_px"], inputs["num_frames"])
        assert (grid.pipeline_height_px, grid.pipeline_width_px) == (inputs["pipeline_height_px"],
                                                                     inputs["pipeline_width_px"]), inputs
        assert list(grid.latent_shape) == inputs["latent_shape"], inputs
        assert list(grid.dvg_full_shape) == inputs["dvg_full_shape"], inputs
        checked += 1
    assert checked == len(cases)


def test_planner_parity_errors_match_feasible_intervals(parity_path):
    """Every reference error is a budget outside our exact feasible set, every success one inside it,
    and the raised error carries the reference's wording plus our feasible range."""
    cases = _load(parity_path, "planner.json")
    checked = errors = 0
    for case in cases:
        inputs, expected = case["inputs"], case["outputs"]
        grid = P.grid_from_inputs(inputs)
        intervals = P.feasible_budget_intervals(grid, inputs["num_steps"])
        inside = any(lo <= inputs["budget"] <= hi for lo, hi in intervals)
        assert inside == ("error" not in expected), (inputs, intervals)
        if "error" in expected:
            errors += 1
            with pytest.raises(P.InfeasibleBudgetError) as info:
                P.check_budget(grid, inputs["num_steps"], inputs["budget"])
            message = str(info.value)
            assert message.startswith(expected["error"])
            assert P.format_intervals(intervals) in message
            assert info.value.feasible_intervals == intervals
        checked += 1
    assert checked == len(cases)
    assert errors == sum("error" in c["outputs"] for c in cases)


def test_planner_parity_plan_round_trip(parity_path):
    """Plan.to_dict -> JSON -> Plan.from_dict is lossless for every feasible case."""
    cases = _load(parity_path, "planner.json")
    checked = 0
    for case in cases:
        inputs = case["inputs"]
        if "error" in case["outputs"]:
            checked += 1
            continue
        plan = P.plan_stages(P.grid_from_inputs(inputs), inputs["num_steps"], inputs["budget"],
                             inputs["spatial_demand"], inputs["temporal_demand"])
        again = P.Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
        assert again == plan
        checked += 1
    assert checked == len(cases)


def test_axes_parity_every_case(parity_path):
    cases = _load(parity_path, "axes.json")
    checked, failures = 0, []
    for index, case in enumerate(cases):
        final_size, stage_sizes = case["final_size"], case["stage_sizes"]
        try:
            axes = P.nested_axes(final_size, stage_sizes)
        except ValueError as exc:
            if "error" not in case:
                failures.append(f"case {index} {final_size} {stage_sizes}: unexpected error {exc}")
            elif str(exc) != case["error"]:
                failures.append(f"case {index} {final_size} {stage_sizes}: error {str(exc)!r} != {case['error']!r}")
        else:
            if "error" in case:
                failures.append(f"case {index} {final_size} {stage_sizes}: expected error {case['error']!r}, "
                                f"got {axes}")
            elif axes != case["axes"]:
                failures.append(f"case {index} {final_size} {stage_sizes}: {axes} != {case['axes']}")
        checked += 1
    assert checked == len(cases)
    assert not failures, "\n".join(failures[:10])


def test_planner_parity_stage_axes_follow_latent_shapes(parity_path):
    """stage_axes in planner.json are built on the latent stage shapes (for HV too, not the pixel ones)."""
    cases = _load(parity_path, "planner.json")
    with_axes = [c for c in cases if "stage_axes" in c["outputs"]]
    checked = 0
    for case in with_axes:
        out = case["outputs"]
        latent = case["inputs"]["latent_shape"]
        for k, (shape, axes) in enumerate(zip(out["stage_shapes"], out["stage_axes"])):
            assert [len(a) for a in axes] == shape, (k, shape)
            assert all(a[-1] < n for a, n in zip(axes, latent))
        checked += 1
    assert checked == len(with_axes) > 0


def test_resize_and_transition_stage_axes_parity(parity_path):
    """The nested axes recorded with resize.json and transition.json cases (built from their latent
    stage shapes) are what `stage_axes` produces."""
    checked = total = 0
    for name in ("resize.json", "transition.json"):
        cases = _load(parity_path, name)
        total += len(cases)
        for case in cases:
            shapes = case["stage_shapes"]
            axes = P.stage_axes(shapes[-1], shapes)
            assert [[list(a) for a in stage] for stage in axes] == case["stage_axes"], (name, case["key"])
            checked += 1
    assert checked == total
