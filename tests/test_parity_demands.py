"""Parity: every case of parity/demands.json (+ demand_inputs.npz).

Tolerances from parity/README.md: S abs 1e-6, f and M abs 1e-5. S may be skipped only for a case
whose reference high-band mask differs from the exact rational rule (n_high_bins_reference !=
n_high_bins_exact_rational); nothing is skipped where our f32 mask reproduces the reference mask."""
import json

import numpy as np
import pytest
import torch

from dvg_engine import demands as D

S_ATOL = 1e-6
FLOW_ATOL = 1e-5
# The demand split is a smooth function of S and M (|∂m/∂x| <= α/4 = 0.65), so it inherits their tolerance.
SPLIT_ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demand_cases(parity_path):
    with open(parity_path / "demands.json", encoding="utf-8") as fh:
        cases = json.load(fh)
    inputs = np.load(parity_path / "demand_inputs.npz")
    assert cases, "demands.json holds no cases"
    return cases, inputs


def _skip_s_allowed(case):
    ref, exact = case["n_high_bins_reference"], case["n_high_bins_exact_rational"]
    return exact is not None and ref != exact


def test_demands_parity_every_case(demand_cases):
    cases, inputs = demand_cases
    checked, s_skipped, failures = 0, 0, []
    for case in cases:
        x0 = torch.from_numpy(inputs[case["key"]])
        assert list(x0.shape) == case["shape"], case["key"]
        # The reference pools the batch (§6.3): compare the pooled demands.
        got = D.compute_demands(x0, plan_scope="batch")
        assert len(got) == x0.shape[0] and all(g == got[0] for g in got)
        d = got[0]
        mask = D.high_frequency_mask(x0.shape[3], x0.shape[4]).to(torch.int64).tolist()
        mask_matches = mask == case["high_bin_mask_reference"]
        if not mask_matches and not _skip_s_allowed(case):
            failures.append(f"{case['key']} {case['name']}: f32 high-band mask differs from the reference")
        if mask_matches:
            if abs(d.S - case["S"]) > S_ATOL:
                failures.append(f"{case['key']} {case['name']}: S {d.S!r} != {case['S']!r}")
        else:
            s_skipped += 1
        for name, tol in (("f", FLOW_ATOL), ("M", FLOW_ATOL)):
            if abs(getattr(d, name) - case[name]) > tol:
                failures.append(f"{case['key']} {case['name']}: {name} {getattr(d, name)!r} != {case[name]!r}")
        for name in ("m_s", "m_t"):
            if mask_matches and abs(getattr(d, name) - case["demand_split"][name]) > SPLIT_ATOL:
                failures.append(f"{case['key']} {case['name']}: {name} {getattr(d, name)!r} != "
                                f"{case['demand_split'][name]!r}")
        checked += 1
    assert checked == len(cases)
    assert not failures, "\n".join(failures)
    assert s_skipped <= sum(_skip_s_allowed(c) for c in cases)


def test_demands_parity_lucas_kanade_pairs(demand_cases):
    """Per frame pair (batch-major) flow and LK sums against the reference's debug record."""
    cases, inputs = demand_cases
    checked = 0
    for case in cases:
        x0 = torch.from_numpy(inputs[case["key"]])
        pairs = D.lucas_kanade_pairs(x0)
        debug = case["debug"]
        for ours, theirs in (("u", "flow_u_per_pair"), ("v", "flow_v_per_pair"), ("a11", "lk_a11"),
                             ("a22", "lk_a22"), ("a12", "lk_a12"), ("b1", "lk_b1"), ("b2", "lk_b2")):
            got = pairs[ours].reshape(-1).double()
            want = torch.tensor(debug[theirs], dtype=torch.float64)
            assert got.shape == want.shape, (case["key"], ours)
            # f32 sums over a frame: relative error of a few ulps of the largest term.
            tol = FLOW_ATOL + 1e-5 * want.abs()
            bad = (got - want).abs() > tol
            assert not bool(bad.any()), f"{case['key']} {ours}: {got[bad].tolist()} != {want[bad].tolist()}"
        checked += 1
    assert checked == len(cases)


def test_demands_parity_high_band_masks(demand_cases):
    """The f32 mask equals the reference mask wherever the exact rule does (tie-free sizes), and the exact
    rule's bin count equals the file's n_high_bins_exact_rational."""
    cases, inputs = demand_cases
    checked = 0
    for case in cases:
        h, w = case["shape"][3], case["shape"][4]
        f32 = D.high_frequency_mask(h, w)
        exact = D.high_frequency_mask(h, w, rule="exact")
        assert int(f32.sum()) == case["n_high_bins_reference"] or _skip_s_allowed(case), case["key"]
        if case["n_high_bins_exact_rational"] is not None:
            assert int(exact.sum()) == case["n_high_bins_exact_rational"], case["key"]
        else:
            assert 1 in (h, w) and bool(exact.all()), case["key"]
        checked += 1
    assert checked == len(cases)


def test_demands_parity_sample_scope_equals_batch_for_single_samples(demand_cases):
    cases, inputs = demand_cases
    checked = 0
    for case in cases:
        x0 = torch.from_numpy(inputs[case["key"]])
        if x0.shape[0] != 1:
            continue
        assert D.compute_demands(x0, "sample") == D.compute_demands(x0, "batch"), case["key"]
        checked += 1
    assert checked == sum(c["shape"][0] == 1 for c in cases)


def test_demands_parity_every_case_cuda(demand_cases, cuda_device):
    """The same vectors through the CUDA path (cuFFT, cuDNN conv). The reference ran on CPU, so the
    tolerance is parity/README.md's ×10 for float-order differences; the high-band mask is always built
    on the CPU in f32, so no device-dependent bins."""
    cases, inputs = demand_cases
    checked = 0
    for case in cases:
        x0 = torch.from_numpy(inputs[case["key"]]).to(cuda_device)
        d = D.compute_demands(x0, plan_scope="batch")[0]
        if not _skip_s_allowed(case):
            assert abs(d.S - case["S"]) <= 10 * S_ATOL, (case["key"], d.S, case["S"])
        assert abs(d.f - case["f"]) <= 10 * FLOW_ATOL, (case["key"], d.f, case["f"])
        assert abs(d.M - case["M"]) <= 10 * FLOW_ATOL, (case["key"], d.M, case["M"])
        checked += 1
    assert checked == len(cases)


def test_transition_plan_parity_from_real_x0(parity_path):
    """transition.json's 0→1 cases were planned by the reference from the real x̂0 (real metrics, not
    injected): x̂0 = x − σ·v, then demands, then the plan — S, f, M, the split, the choice, the density
    (exact), the stage shapes and the axes."""
    from dvg_engine import planner as P
    with open(parity_path / "transition.json", encoding="utf-8") as fh:
        cases = json.load(fh)
    arrays = np.load(parity_path / "transition.npz")
    planned = [c for c in cases if c["from_stage"] == 0]
    assert planned, "transition.json has no 0→1 case"
    checked = 0
    for case in planned:
        latents = torch.from_numpy(arrays[f"{case['key']}_latents"])
        velocity = torch.from_numpy(arrays[f"{case['key']}_velocity"])
        sigma = torch.tensor(case["x0_sigma"], dtype=torch.float32)
        x0 = latents + velocity * (torch.zeros((), dtype=torch.float32) - sigma)
        T, H, W = case["dvg_full_shape"]
        if case["model"] == "hunyuan_video":
            grid = P.full_grid(case["model"], H, W, 4 * (T - 1) + 1)
        else:
            grid = P.full_grid(case["model"], 16 * H, 16 * W, 4 * (T - 1) + 1)
        assert list(grid.dvg_full_shape) == case["dvg_full_shape"]
        # These setups use 4 latent channels instead of the model's 16/32, hence no shape check.
        plan = P.plan_from_x0(grid, case["num_steps"], case["budget"], x0, check_shape=False)[0]
        d = D.compute_demands(x0)[0]
        ref = case["plan"]
        assert abs(d.S - ref["S"]) <= S_ATOL and abs(d.f - ref["f"]) <= FLOW_ATOL and abs(d.M - ref["M"]) <= FLOW_ATOL
        assert abs(plan.m_s - ref["m_s"]) <= SPLIT_ATOL and abs(plan.m_t - ref["m_t"]) <= SPLIT_ATOL
        assert (plan.s2, plan.t23, plan.density) == (ref["s2"], ref["t23"], ref["density"])
        assert [list(s) for s in plan.stage_shapes] == case["stage_shapes"]
        assert [[list(a) for a in stage] for stage in plan.stage_axes] == case["stage_axes"]
        checked += 1
    assert checked == len(planned)
