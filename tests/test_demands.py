"""Unit tests of dvg_engine.demands: sign conventions on synthetic motion, per-sample vs pooled batch
demands, the skipped cases, validation errors, and planning from an x̂0."""
import math

import pytest
import torch

from dvg_engine import demands as D
from dvg_engine import planner as P


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _moving_blob(vx, vy, frames=6, size=24, channels=4, sigma=3.0):
    """(1, C, T, H, W) Gaussian blob translating by (vx, vy) latent pixels per frame."""
    y = torch.arange(size, dtype=torch.float64)[:, None]
    x = torch.arange(size, dtype=torch.float64)[None, :]
    out = []
    for t in range(frames):
        cy, cx = size / 2 - 3 + vy * t, size / 2 - 3 + vx * t
        out.append(torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2)))
    field = torch.stack(out)[None, None].expand(1, channels, frames, size, size)
    return field.to(torch.float32).contiguous()


@pytest.mark.parametrize("vx,vy", [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.5, -0.5)])
def test_flow_direction_matches_motion(vx, vy):
    pairs = D.lucas_kanade_pairs(_moving_blob(vx, vy))
    u, v = pairs["u"].mean().item(), pairs["v"].mean().item()
    # Global LK on a smooth blob recovers the motion to within ~10% (the spec's blob gives u ≈ 0.965).
    assert u == pytest.approx(vx, abs=0.15) and v == pytest.approx(vy, abs=0.15)
    f = D.temporal_flow(_moving_blob(vx, vy)).item()
    assert f == pytest.approx(math.hypot(vx, vy), rel=0.15)


def test_static_and_constant_inputs():
    static = _moving_blob(0.0, 0.0)
    d = D.compute_demands(static)[0]
    assert d.f == 0.0 and d.M == 0.0 and d.used
    const = torch.full((1, 4, 3, 8, 8), 2.5)
    d = D.compute_demands(const)[0]
    assert (d.S, d.f, d.M) == (0.0, 0.0, 0.0) and (d.m_s, d.m_t) == (0.5, 0.5)


def test_white_noise_spatial_demand_is_high_and_smooth_is_low():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 4, 32, 32, generator=g)
    assert 0.55 < D.spatial_demand(noise).item() < 0.72         # ≈ the high-band share of the bins
    assert D.spatial_demand(_moving_blob(0.0, 0.0)).item() < 1e-3


def test_high_band_share_matches_mask_for_white_power():
    # An impulse in every frame has a flat spectrum: S is exactly the fraction of high bins.
    x = torch.zeros(1, 1, 2, 9, 9)
    x[..., 0, 0] = 1.0
    x[:, :, 1] = -x[:, :, 1]  # non-constant so the standardisation is defined
    expected = D.high_frequency_mask(9, 9).sum().item() / 81
    assert D.spatial_demand(x).item() == pytest.approx(expected, abs=1e-6)


def test_sample_scope_per_sample_and_batch_pooled():
    a = _moving_blob(1.0, 0.0)
    g = torch.Generator().manual_seed(1)
    b = torch.randn(1, 4, 6, 24, 24, generator=g)
    x = torch.cat([a, b])
    per_sample = D.compute_demands(x, "sample")
    assert len(per_sample) == 2
    # Bit-identical to planning each sample alone: a plan must not depend on its batch neighbours.
    assert per_sample[0] == D.compute_demands(a)[0] and per_sample[1] == D.compute_demands(b)[0]
    assert per_sample[0] != per_sample[1]
    pooled = D.compute_demands(x, "batch")
    assert len(pooled) == 2 and pooled[0] == pooled[1]
    # Pooled flow = mean over all pairs of both samples; pooled S = Σ high power / Σ total power.
    pairs = D.lucas_kanade_pairs(x)
    assert pooled[0].f == pytest.approx(torch.sqrt(pairs["u"] ** 2 + pairs["v"] ** 2).mean().item(), abs=1e-6)
    high_a, total_a = D._spatial_power_sums(a)
    high_b, total_b = D._spatial_power_sums(b)
    assert pooled[0].S == pytest.approx(((high_a + high_b) / (total_a + total_b)).item(), abs=1e-6)
    assert min(per_sample[0].S, per_sample[1].S) <= pooled[0].S <= max(per_sample[0].S, per_sample[1].S)


def test_metrics_skipped_for_single_frame_or_pixel():
    for shape in ((2, 4, 1, 8, 8), (1, 4, 3, 1, 1)):
        out = D.compute_demands(torch.randn(shape))
        assert len(out) == shape[0]
        assert all((d.S, d.f, d.M, d.used) == (0.0, 0.0, 0.0, False) for d in out)
    with pytest.raises(ValueError, match="at least 2 frames"):
        D.lucas_kanade_pairs(torch.randn(1, 4, 1, 8, 8))


def test_h1_grid_counts_every_bin_high():
    assert bool(D.high_frequency_mask(1, 16).all()) and bool(D.high_frequency_mask(1, 16, rule="exact").all())


def test_exact_rule_differs_from_f32_only_on_circle_ties():
    # 29×29 puts bins exactly on the radius-0.5 circle; f32 drops 4 of them, the exact rule keeps them.
    f32, exact = D.high_frequency_mask(29, 29), D.high_frequency_mask(29, 29, rule="exact")
    assert int(exact.sum()) - int(f32.sum()) == 4 and bool((f32 <= exact).all())
    assert torch.equal(D.high_frequency_mask(9, 9), D.high_frequency_mask(9, 9, rule="exact"))


@pytest.mark.parametrize("bad,match", [
    (torch.randn(4, 3, 8, 8), "5-D"), (torch.ones(1, 4, 3, 8, 8, dtype=torch.int64), "floating-point"),
    (torch.full((1, 4, 3, 8, 8), float("nan")), "finite"), (torch.empty(0, 4, 3, 8, 8), "non-empty"),
])
def test_validation_errors(bad, match):
    with pytest.raises(ValueError, match=rf"^x0=<tensor.*allowed: .*{match}"):
        D.compute_demands(bad)
    with pytest.raises(TypeError, match="x0="):
        D.compute_demands([[1.0]])
    with pytest.raises(ValueError, match="plan_scope='all'"):
        D.compute_demands(torch.randn(1, 4, 3, 8, 8), plan_scope="all")
    with pytest.raises(ValueError, match="rule='f64'"):
        D.high_frequency_mask(8, 8, rule="f64")


def test_bf16_input_is_computed_in_f32():
    x = _moving_blob(1.0, 0.0)
    d32 = D.compute_demands(x)[0]
    d16 = D.compute_demands(x.to(torch.bfloat16))[0]
    assert d16.f == pytest.approx(d32.f, abs=0.05)


def test_plan_from_x0_sample_and_batch_scopes():
    grid = P.full_grid("hunyuan_video_1_5", 480, 848, 33)            # T = 9 -> stage 0 (4, 15, 26)
    stage0 = P.initial_plan(grid, 30, 0.5).stage_shapes[0]
    assert stage0 == (4, 15, 26)
    g = torch.Generator().manual_seed(2)
    smooth = torch.zeros(1, 32, *stage0)
    smooth += torch.linspace(0, 1, stage0[2])[None, None, None, None, :]
    smooth += 0.3 * torch.arange(stage0[0], dtype=torch.float32)[None, None, :, None, None]
    noisy = torch.randn(1, 32, *stage0, generator=g)
    x0 = torch.cat([smooth, noisy])
    plans = P.plan_from_x0(grid, 30, 0.5, x0)
    demands = D.compute_demands(x0)
    assert len(plans) == 2
    for plan, d in zip(plans, demands):
        assert plan == P.plan_stages(grid, 30, 0.5, d.S, d.M)
    pooled = P.plan_from_x0(grid, 30, 0.5, x0, plan_scope="batch")
    assert pooled[0] is pooled[1]
    d = D.compute_demands(x0, "batch")[0]
    assert pooled[0] == P.plan_stages(grid, 30, 0.5, d.S, d.M)
    assert P.plan_from_x0(grid, 30, 0.5, noisy)[0] == plans[1]


def test_plan_from_x0_checks_the_stage0_shape():
    grid = P.full_grid("hunyuan_video", 720, 1280, 129)
    with pytest.raises(ValueError, match=r"x0=.*shape \(B, 16, 13, 44, 80\)"):
        P.plan_from_x0(grid, 50, 0.5, torch.randn(1, 16, 13, 45, 80))
    with pytest.raises(ValueError, match="x0=.*shape"):
        P.plan_from_x0(grid, 50, 0.5, torch.randn(1, 32, 13, 44, 80))
    plan = P.plan_from_x0(grid, 50, 0.5, torch.randn(1, 16, 13, 45, 80), check_shape=False)[0]
    assert plan.planned


def test_cuda_demands_match_cpu_with_one_host_read(cuda_device):
    """On a GPU (or the simulated device of tests/_cuda_sim.py) the demands stay on the device until one read (which
    also carries the finiteness check)."""
    from _backends import synchronising_calls
    g = torch.Generator().manual_seed(5)
    x = _moving_blob(1.0, 0.5, channels=16) + 0.1 * torch.randn(1, 16, 6, 24, 24, generator=g)
    x = torch.cat([x, torch.randn(1, 16, 6, 24, 24, generator=g)])
    cpu = D.compute_demands(x)
    gpu = D.compute_demands(x.to(cuda_device))
    for a, b in zip(cpu, gpu):
        assert b.S == pytest.approx(a.S, abs=1e-5) and b.f == pytest.approx(a.f, abs=1e-4)
    xc = x.to(cuda_device).to(torch.bfloat16)
    D.compute_demands(xc)                                # warm-up: per-device mask and Sobel caches
    assert synchronising_calls(lambda: (D.compute_demands(xc), D.compute_demands(xc, plan_scope="batch"))) == 2
    bad = x.to(cuda_device).clone()
    bad[1, 3, 2, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        D.compute_demands(bad)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 10.0), negate=st.booleans(), shift=st.floats(-5, 5),
       roll_h=st.integers(0, 11), roll_w=st.integers(0, 13))
def test_property_demands_invariances(seed, scale, negate, shift, roll_h, roll_w):
    """S and f standardise their input: invariant under x -> a·x + b (a != 0); S also under circular
    shifts in H and W (|DFT| is shift-invariant)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 3, 4, 12, 14, generator=g)
    base = base + torch.linspace(0, 2, 14)  # some smooth structure, so the flow is not pure noise
    a = -scale if negate else scale
    ref = D.compute_demands(base)[0]
    affine = D.compute_demands(a * base + shift)[0]
    rolled = D.compute_demands(torch.roll(base, shifts=(roll_h, roll_w), dims=(3, 4)))[0]
    assert affine.S == pytest.approx(ref.S, abs=2e-5)
    assert affine.f == pytest.approx(ref.f, rel=1e-3, abs=1e-5)
    assert rolled.S == pytest.approx(ref.S, abs=2e-5)
    assert 0.0 <= ref.S <= 1.0 and ref.f >= 0.0 and 0.0 <= ref.M < 1.0
