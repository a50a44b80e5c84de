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
