"""Unit and property tests of the sampling references (dvg_engine.sampling): options, errors and
invariants beyond the parity vectors (those are in test_parity_sampling.py)."""
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _tolerances import assert_verbose_allclose
from dvg_engine.sampling import (FINAL_STEP_ERROR, NOISE_CONSTANTS, REFERENCE_NOISE_SEED, StageSchedule,
                                 coordinate_noise, default_transition_steps, flow_sigmas, renoise,
                                 resample_and_renoise, resize_to_stage, smooth_first_transition, stage_anchors,
                                 transition, transition_seed, validate_anchors, x0_from_velocity)

FAST = settings(max_examples=25, deadline=None)
M64 = (1 << 64) - 1


# ------------------------------------------------------------------------------------ helpers

def nested_axis(rng: random.Random, full: int, size: int):
    """A random subset of range(full) of `size` coordinates containing 0 and full − 1."""
    if size == 1:
        return [0]
    inner = rng.sample(range(1, full - 1), size - 2) if size > 2 else []
    return sorted([0, full - 1] + inner)


def random_transition_axes(rng: random.Random, full=(7, 9, 11), max_src=None):
    dst, src = [], []
    for f in full:
        d = rng.randint(1, f)
        s = rng.randint(1, d) if max_src is None else min(max_src, rng.randint(1, d))
        d_axis = nested_axis(rng, f, d) if d < f else list(range(f))
        if s == 1:
            s_axis = [d_axis[0]]
        else:
            picks = sorted(rng.sample(range(1, d - 1), s - 2)) if s > 2 else []
            s_axis = [d_axis[0]] + [d_axis[p] for p in picks] + [d_axis[-1]]
        dst.append(d_axis)
        src.append(s_axis)
    return src, dst


def naive_resize(x, target, anchors):
    """The §9 resize written literally, element by element, in float64 (independent of the vectorised one)."""
    b, c, ts, hs, ws = x.shape
    td, hd, wd = target
    at, ah, aw = anchors
    x = x.double()
    spatial = torch.empty(b, c, ts, hd, wd, dtype=torch.float64)
    for i in range(hd):
        r0, r1 = (i * hs) // hd, -((-(i + 1) * hs) // hd)
        for j in range(wd):
            c0, c1 = (j * ws) // wd, -((-(j + 1) * ws) // wd)
            spatial[..., i, j] = x[..., r0:r1, c0:c1].sum(dim=(-1, -2)) / ((r1 - r0) * (c1 - c0))
    for si, i in enumerate(ah):
        for sj, j in enumerate(aw):
            spatial[..., i, j] = x[..., si, sj]
    out = torch.empty(b, c, td, hd, wd, dtype=torch.float64)
    for p in range(td):
        if ts == 1:
            out[:, :, p] = spatial[:, :, 0]
            continue
        left = min(max(sum(a <= p for a in at) - 1, 0), ts - 2)
        right = left + 1
        w = (p - at[left]) / max(at[right] - at[left], 1)
        w = 0.0 if p <= at[0] else 1.0 if p >= at[-1] else w
        out[:, :, p] = spatial[:, :, left] + w * (spatial[:, :, right] - spatial[:, :, left])
    return out


def scalar_noise(t, h, w, c, seed):
    """§11 for one element with Python ints and math (independent of the torch implementation)."""
    k = NOISE_CONSTANTS

    def signed(v):
        v &= M64
        return v - (1 << 64) if v >> 63 else v

    def mix(v):
        v = signed(v)
        v = signed((v ^ (v >> 30)) * k["mix_mult_1"])
        v = signed((v ^ (v >> 27)) * k["mix_mult_2"])
        return v ^ (v >> 31)

    base = (t * k["t_mult"] + h * k["h_mult"] + w * k["w_mult"] + c * k["c_mult"] + seed * k["seed_mult"]) & M64
    u = []
    for value in (mix(base), mix(base + k["second_stream_offset"])):
        x = ((value & ((1 << 53) - 1)) + 0.5) / 2.0 ** 53
        u.append(min(max(x, 1e-12), 1 - 1e-12))
    return math.sqrt(-2.0 * math.log(u[0])) * math.cos(2.0 * math.pi * u[1]), signed(base)


# ------------------------------------------------------------------------------------ schedule

@pytest.mark.parametrize("model", ["hunyuan_video", "hunyuan_video_1_5"])
@pytest.mark.parametrize("n, shift", [(1, 7.0), (12, 5.0), (50, 9.0), (30, 1.0)])
def test_flow_sigmas_shape_and_monotone(model, n, shift):
    sigmas, timesteps = flow_sigmas(n, shift, model)
    assert sigmas.shape == (n + 1,) and timesteps.shape == (n,)
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert torch.equal(timesteps, sigmas[:-1] * 1000)


def test_flow_sigmas_hv15_skips_shift_one():
    sigmas, _ = flow_sigmas(30, 1.0, "hunyuan_video_1_5")
    assert torch.equal(sigmas, torch.linspace(1, 0, 31, dtype=torch.float32))


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(num_steps=0, shift=7.0, model="hunyuan_video"), "num_steps=0"),
    (dict(num_steps=10, shift=0.0, model="hunyuan_video"), "shift=0.0"),
    (dict(num_steps=10, shift=float("nan"), model="hunyuan_video"), "shift=nan"),
    (dict(num_steps=10, shift=7.0, model="wan"), "model='wan'"),
])
def test_flow_sigmas_errors(kwargs, fragment):
    with pytest.raises(ValueError, match="allowed") as err:
        flow_sigmas(**kwargs)
    assert fragment in str(err.value)


def test_model_aliases_accepted():
    assert torch.equal(flow_sigmas(5, 7.0, "hunyuan-video-1.5")[0], flow_sigmas(5, 7.0, "hunyuan_video_1_5")[0])


def test_default_transition_steps():
    assert default_transition_steps(50) == (14, 25, 36)
    assert default_transition_steps(30) == (8, 15, 21)
    assert default_transition_steps(12) == (3, 6, 8)
    assert default_transition_steps(5) == (1, 2, 3)
    assert default_transition_steps(4) == (1, 2)


def run_loop(schedule):
    """Bookkeeping of a whole generation: kinds per step."""
    kinds = []
    x = torch.ones(1, 1, 1, 1, 1)
    for i in range(schedule.num_steps):
        if schedule.is_transition(i):
            schedule.begin_transition(i)
            kinds.append("T")
        else:
            x = schedule.euler_step(x, x, i)
            kinds.append("E")
    return kinds


def test_schedule_small_n_collision_q6():
    schedule = StageSchedule(4, "hunyuan_video", 7.0)
    assert run_loop(schedule) == ["E", "T", "T", "E"]
    assert schedule.stage == 2  # only two transitions: the output stays at stage 2's shape


@pytest.mark.parametrize("n", [2, 3])
def test_schedule_transition_at_final_step_raises(n):
    schedule = StageSchedule(n, "hunyuan_video_1_5", 7.0)
    with pytest.raises(ValueError, match=FINAL_STEP_ERROR):
        run_loop(schedule)


def test_final_step_raises_through_transition():
    schedule = StageSchedule(3, "hunyuan_video", 7.0)
    run_loop_until = [schedule.begin_transition(i) for i in range(2)]
    assert len(run_loop_until) == 2
    x = torch.zeros(1, 1, 1, 1, 1)
    axes = ([0], [0], [0])
    with pytest.raises(ValueError, match=FINAL_STEP_ERROR):
        transition(x, x, schedule=schedule, step=2, plan_axes=(axes, axes), target_shape=(1, 1, 1), channels=1,
                   seeds=REFERENCE_NOISE_SEED)


def test_schedule_model_timesteps_hv_vs_hv15():
    hv = StageSchedule(50, "hunyuan_video", 5.0)
    hv15 = StageSchedule(50, "hunyuan_video_1_5", 5.0)
    fixed = StageSchedule(50, "hunyuan_video_1_5", 5.0, hv15_timesteps="reshifted")
    run_loop(hv), run_loop(hv15), run_loop(fixed)
    stage0 = flow_sigmas(50, 5.0, "hunyuan_video_1_5")[1]
    assert hv15.model_timestep(40) == float(stage0[40])  # Q5: stale stage-0 timesteps
    assert hv.model_timestep(40) == float(hv.timesteps[40]) != float(stage0[40])
    assert fixed.model_timestep(40) == float(fixed.timesteps[40])
    # with consistent timesteps the x̂0 σ index is the step itself at every transition (unlike Q5)
    assert [t.x0_sigma_index for t in fixed.history] == [14, 25, 36]
    assert [t.x0_sigma_index for t in hv15.history] == [14, 32, 42]
    assert [t.x0_sigma_index for t in hv.history] == [14, 25, 36]


def test_schedule_euler_step_rejects_transition_step_and_bad_steps():
    schedule = StageSchedule(12, "hunyuan_video", 7.0)
    x = torch.zeros(1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="step=3 is a transition step"):
        schedule.euler_step(x, x, 3)
    with pytest.raises(ValueError, match="step=12"):
        schedule.euler_step(x, x, 12)
    with pytest.raises(ValueError, match="step=4 is not a transition step"):
        schedule.begin_transition(4)


def test_schedule_euler_step_upcasts():
    schedule = StageSchedule(12, "hunyuan_video", 7.0)
    x = torch.randn(1, 2, 1, 2, 2, dtype=torch.bfloat16)
    v = torch.randn(1, 2, 1, 2, 2, dtype=torch.bfloat16)
    out = schedule.euler_step(x, v, 0)
    assert out.dtype == torch.float32
    assert torch.equal(out, x.float() + v.float() * (schedule.sigmas[1] - schedule.sigmas[0]))


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(stage_shifts=(7.0, 9.0, 11.0)), "stage_shifts"),
    (dict(stage_shifts=(7.0, 9.0, -1.0, 11.0)), "stage_shifts[2]=-1.0"),
    (dict(hv15_timesteps="fixed"), "hv15_timesteps='fixed'"),
    (dict(transition_steps=[3, 12]), "transition_steps[]=12"),
])
def test_schedule_errors(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        StageSchedule(12, "hunyuan_video", 7.0, **kwargs)
    assert fragment in str(err.value) and "allowed" in str(err.value)


def test_schedule_custom_shifts_and_steps():
    schedule = StageSchedule(20, "hunyuan_video", 6.0, (0.0 + 1.0, 8.0, 10.0, 12.0), transition_steps=[10, 5])
    assert schedule.transition_steps == (5, 10)
    run_loop(schedule)
    assert [s["shift"] for s in schedule.stage_schedules] == [6.0, 8.0, 10.0]
    assert schedule.stage == 2


# ------------------------------------------------------------------------------------ x̂0 and re-noise

def test_x0_from_velocity():
    x, v = torch.randn(2, 3, 2, 4, 5), torch.randn(2, 3, 2, 4, 5)
    sigma = torch.tensor(0.37, dtype=torch.float32)
    assert torch.equal(x0_from_velocity(x, v, sigma), x - sigma * v)
    assert torch.equal(x0_from_velocity(x, v, 0.0), x)
    with pytest.raises(ValueError, match="velocity"):
        x0_from_velocity(x, v[:, :2], sigma)


@FAST
@given(seed=st.integers(0, 2 ** 31), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_renoise_sigma_zero_returns_x0_exactly(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    x0 = (torch.randn(2, 3, 2, 3, 4, generator=gen) * 10).to(dtype)
    noise = torch.randn(1, 3, 2, 3, 4, generator=gen)
    out = renoise(x0, noise, torch.tensor(0.0))
    assert out.dtype == torch.float32
    assert torch.equal(out, x0.float())
    assert torch.equal(renoise(x0, noise, 1.0), noise.expand_as(out))


def test_renoise_errors():
    with pytest.raises(ValueError, match="noise"):
        renoise(torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 3, 1, 2, 2), 0.5)
    with pytest.raises(ValueError, match="sigma"):
        renoise(torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 2, 1, 2, 2), torch.tensor([0.5, 0.5]))


# ------------------------------------------------------------------------------------ anchors and resize

def test_stage_anchors_values_and_errors():
    assert stage_anchors(([0, 5], [0, 3, 7], [0]), ([0, 2, 5], [0, 1, 3, 5, 7], [0])) == ([0, 2], [0, 2, 4], [0])
    with pytest.raises(ValueError, match=r"src_axes\[h\].*missing \[4\]"):
        stage_anchors(([0], [0, 4, 7], [0]), ([0], [0, 3, 7], [0]))
    with pytest.raises(ValueError, match=r"dst_axes\[t\]"):
        stage_anchors(([0], [0], [0]), ([0, 0], [0], [0]))
    with pytest.raises(ValueError, match=r"anchor_w"):  # source does not reach the last target coordinate
        stage_anchors(([0], [0], [0, 3]), ([0], [0], [0, 3, 5]))


def test_validate_anchors_errors():
    assert validate_anchors("anchor_t", torch.tensor([0, 2, 3]), 3, 4) == [0, 2, 3]
    for bad in ([0, 2, 2, 3], [1, 2, 3], [0, 1, 2], [0, 3, 2]):
        with pytest.raises(ValueError, match="anchor_t"):
            validate_anchors("anchor_t", bad[:3] if len(bad) == 3 else bad, 3, 4)


@FAST
@given(seed=st.integers(0, 10 ** 6))
def test_resize_anchor_values_survive_and_match_literal_spec(seed):
    rng = random.Random(seed)
    src_axes, dst_axes = random_transition_axes(rng)
    anchors = stage_anchors(src_axes, dst_axes)
    batch, channels = rng.randint(1, 2), rng.randint(1, 3)
    x0 = torch.randn(batch, channels, *(len(a) for a in src_axes), generator=torch.Generator().manual_seed(seed))
    target = [len(a) for a in dst_axes]
    out = resize_to_stage(x0, target, *anchors)
    assert out.shape == (batch, channels, *target) and out.dtype == torch.float32
    at, ah, aw = (torch.tensor(a) for a in anchors)
    restored = out[:, :, at][:, :, :, ah][:, :, :, :, aw]
    assert torch.equal(restored, x0)  # anchors survive bit for bit
    assert_verbose_allclose(out, naive_resize(x0, target, anchors), atol=2e-6, name="resize vs literal spec")


def test_resize_single_frame_repeats_and_identity():
    x0 = torch.randn(1, 2, 1, 3, 3)
    out = resize_to_stage(x0, (5, 3, 3), [0], [0, 1, 2], [0, 1, 2])
    assert torch.equal(out, x0.expand(1, 2, 5, 3, 3))
    assert out.is_contiguous()
    same = torch.randn(2, 2, 3, 4, 5)
    identity = resize_to_stage(same, (3, 4, 5), [0, 1, 2], [0, 1, 2, 3], list(range(5)))
    assert torch.equal(identity, same) and identity.data_ptr() != same.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_resize_dtypes_and_upcast(dtype):
    rng = random.Random(3)
    src_axes, dst_axes = random_transition_axes(rng, full=(9, 8, 10))
    anchors = stage_anchors(src_axes, dst_axes)
    x0 = torch.randn(1, 2, *(len(a) for a in src_axes)).to(dtype)
    target = [len(a) for a in dst_axes]
    up = resize_to_stage(x0, target, *anchors, upcast=True)
    native = resize_to_stage(x0, target, *anchors, upcast=False)
    assert up.dtype == native.dtype == dtype
    assert torch.equal(up, resize_to_stage(x0.float(), target, *anchors).to(dtype))
    tol = {torch.bfloat16: 3e-2, torch.float16: 4e-3, torch.float64: 1e-6}[dtype]
    assert_verbose_allclose(native, up, atol=tol, name=f"resize {dtype} native vs upcast")


@pytest.mark.parametrize("call, fragment", [
    (lambda x: resize_to_stage(x[0], (2, 3, 3), [0, 1], [0, 2], [0, 2]), "x0="),
    (lambda x: resize_to_stage(x, (2, 3), [0, 1], [0, 2], [0, 2]), "target_shape"),
    (lambda x: resize_to_stage(x, (1, 3, 3), [0, 1], [0, 2], [0, 2]), "target_shape"),
    (lambda x: resize_to_stage(x, (2, 3, 3), [0, 1], [0, 1], [0, 2]), "anchor_h"),
    (lambda x: resize_to_stage(x, (2, 3, 3), [0, 1], [0, 2], [0, 2, 3]), "anchor_w"),
    (lambda x: resize_to_stage(x.long(), (2, 3, 3), [0, 1], [0, 2], [0, 2]), "floating-point"),
])
def test_resize_errors(call, fragment):
    with pytest.raises(ValueError, match="allowed") as err:
        call(torch.zeros(1, 1, 2, 2, 2))
    assert fragment in str(err.value)


# ------------------------------------------------------------------------------------ smoothing

def test_smoothing_zero_padding_darkens_borders_and_exclude_does_not():
    x = torch.ones(1, 2, 2, 4, 5)
    zeros = smooth_first_transition(x, padding="zeros")
    exclude = smooth_first_transition(x, padding="exclude")
    assert torch.equal(exclude, x)  # Q8 fix: a constant field stays constant
    assert zeros[..., 0, 0].sub(0.7 + 0.3 * 4 / 9).abs().max() < 1e-6  # corner sees 4 of 9 pixels
    assert zeros[..., 0, 2].sub(0.7 + 0.3 * 6 / 9).abs().max() < 1e-6  # edge sees 6 of 9
    assert torch.equal(zeros[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])


def test_smoothing_interior_equals_for_both_paddings_and_matches_manual():
    x = torch.randn(2, 3, 2, 5, 6)
    zeros = smooth_first_transition(x)
    exclude = smooth_first_transition(x, padding="exclude")
    assert_verbose_allclose(zeros[..., 1:-1, 1:-1], exclude[..., 1:-1, 1:-1], atol=1e-6, name="interior")
    padded = torch.nn.functional.pad(x.double(), (1, 1, 1, 1))
    manual = sum(padded[..., i:i + 5, j:j + 6] for i in range(3) for j in range(3)) / 9
    assert_verbose_allclose(zeros, 0.7 * x.double() + 0.3 * manual, atol=2e-6, name="manual smoothing")
    assert smooth_first_transition(x.to(torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="padding='reflect'"):
        smooth_first_transition(x, padding="reflect")


# ------------------------------------------------------------------------------------ noise

@FAST
@given(seed=st.integers(0, 10 ** 6))
def test_noise_same_full_grid_coordinate_same_value_at_every_stage(seed):
    rng = random.Random(seed)
    src_axes, dst_axes = random_transition_axes(rng, full=(9, 12, 14))
    noise_seed = rng.choice([REFERENCE_NOISE_SEED, -1, 0, 2 ** 40 + 7, rng.getrandbits(64)])
    small = coordinate_noise(*src_axes, 3, noise_seed)
    large = coordinate_noise(*dst_axes, 3, noise_seed)
    at, ah, aw = (torch.tensor(a) for a in stage_anchors(src_axes, dst_axes))
    assert torch.equal(large[:, :, at][:, :, :, ah][:, :, :, :, aw], small)


@pytest.mark.parametrize("seed", [REFERENCE_NOISE_SEED, -1, 2 ** 40 + 7, 2 ** 64 - 1, -(2 ** 63)])
def test_noise_matches_scalar_python_implementation(seed):
    axes = ([0, 5, 30], [2, 89], [0, 1, 159])
    noise, streams = coordinate_noise(*axes, 3, seed, return_streams=True)
    for c in range(3):
        for ti, t in enumerate(axes[0]):
            for hi, h in enumerate(axes[1]):
                for wi, w in enumerate(axes[2]):
                    value, base = scalar_noise(t, h, w, c, seed)
                    assert int(streams["base"][c, ti, hi, wi]) == base
                    assert abs(float(streams["noise_f64"][0, c, ti, hi, wi]) - value) <= 1e-12
    assert torch.equal(noise, streams["noise_f64"].float())


def test_noise_seed_mod_2_64_and_seeds_differ():
    axes = ([0, 1], [0, 1, 2], [3, 4])
    assert torch.equal(coordinate_noise(*axes, 2, -1), coordinate_noise(*axes, 2, 2 ** 64 - 1))
    assert not torch.equal(coordinate_noise(*axes, 2, 0), coordinate_noise(*axes, 2, 1))


def test_noise_statistics():
    noise = coordinate_noise(range(8), range(40), range(40), 16, REFERENCE_NOISE_SEED, dtype=torch.float64)
    assert noise.numel() == 204800
    assert abs(noise.mean().item()) < 0.01
    assert abs(noise.std().item() - 1.0) < 0.01
    assert abs((noise.abs() < 1).double().mean().item() - 0.6827) < 0.01


def test_noise_dtype_and_errors():
    axes = ([0], [0, 4], [1, 2])
    f32 = coordinate_noise(*axes, 2, 7)
    assert torch.equal(coordinate_noise(*axes, 2, 7, dtype=torch.bfloat16), f32.to(torch.bfloat16))
    with pytest.raises(ValueError, match="axis_h"):
        coordinate_noise([0], [], [0], 2, 7)
    with pytest.raises(ValueError, match="axis_w"):
        coordinate_noise([0], [0], [-1], 2, 7)
    with pytest.raises(ValueError, match="channels=0"):
        coordinate_noise([0], [0], [0], 0, 7)
    with pytest.raises(ValueError, match="seed=1.5"):
        coordinate_noise([0], [0], [0], 1, 1.5)
    with pytest.raises(ValueError, match="dtype"):
        coordinate_noise([0], [0], [0], 1, 1, dtype=torch.int32)


def test_transition_seed_modes():
    assert transition_seed("reference", 7, 0) == transition_seed("reference", None, 3) == REFERENCE_NOISE_SEED
    assert transition_seed("reference", 7, reference_seed=99) == 99
    seeded = {transition_seed("seeded", s, i) for s in range(4) for i in range(3)}
    # depends on the per-sample generator seed user_seed + sample_index only
    assert transition_seed("seeded", 5, 1) == transition_seed("seeded", 6, 0)
    assert len(seeded) == len({s + i for s in range(4) for i in range(3)})
    assert transition_seed("seeded", 5, 0) == transition_seed("seeded", 5, 0)
    assert REFERENCE_NOISE_SEED not in seeded
    assert all(-(2 ** 63) <= s < 2 ** 63 for s in seeded)
    with pytest.raises(ValueError, match="user_seed=None"):
        transition_seed("seeded", None, 0)
    with pytest.raises(ValueError, match="noise_seed_mode='fixed'"):
        transition_seed("fixed", 1, 0)


# ------------------------------------------------------------------------------------ composed transition

def small_transition_setup(batch=2, channels=3, seed=0):
    rng = random.Random(seed)
    full = (9, 8, 12)
    axes3 = [list(range(f)) for f in full]
    axes1 = [nested_axis(rng, f, s) for f, s in zip(full, (5, 6, 9))]
    axes0 = [[a[0]] + sorted(rng.sample(a[1:-1], max(s - 2, 0))) + [a[-1]] for a, s in zip(axes1, (3, 4, 6))]
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, channels, *(len(a) for a in axes0), generator=gen)
    velocity = torch.randn(batch, channels, *(len(a) for a in axes0), generator=gen)
    return latents, velocity, (axes0, axes1, axes3)


def run_first_transition(latents, velocity, axes, seeds, **kwargs):
    schedule = StageSchedule(12, "hunyuan_video", 7.0)
    out = transition(latents, velocity, schedule=schedule, step=3, plan_axes=(axes[0], axes[1]),
                     target_shape=[len(a) for a in axes[1]], channels=latents.shape[1], seeds=seeds, **kwargs)
    return out, schedule


def test_transition_composes_the_recipe():
    latents, velocity, axes = small_transition_setup(batch=1)
    out, schedule = run_first_transition(latents, velocity, axes, REFERENCE_NOISE_SEED)
    info = schedule.history[-1]
    x0 = latents - schedule.stage0_sigmas[info.x0_sigma_index] * velocity
    up = smooth_first_transition(resize_to_stage(x0, [len(a) for a in axes[1]], *stage_anchors(axes[0], axes[1])))
    noise = coordinate_noise(*axes[1], latents.shape[1], REFERENCE_NOISE_SEED)
    sigma = schedule.sigmas[info.renoise_sigma_index]
    assert torch.equal(out, up * (1 - sigma) + noise * sigma)
    assert schedule.stage == 1 and info.renoise_sigma_index == 4


def test_transition_batch_seeds_per_sample():
    latents, velocity, axes = small_transition_setup(batch=3)
    latents[2], velocity[2] = latents[0], velocity[0]
    out, _ = run_first_transition(latents, velocity, axes, [11, 22, 11])
    for b, seed in enumerate([11, 22, 11]):
        single, _ = run_first_transition(latents[b:b + 1], velocity[b:b + 1], axes, seed)
        assert torch.equal(out[b:b + 1], single)
    assert torch.equal(out[0], out[2])
    other, _ = run_first_transition(latents, velocity, axes, [11, 11, 11])
    assert torch.equal(other[0], out[0]) and not torch.equal(other[1], out[1])


def test_transition_options_dtype_padding_and_precomputed_x0():
    latents, velocity, axes = small_transition_setup(batch=1)
    base, schedule = run_first_transition(latents, velocity, axes, 5)
    bf16, _ = run_first_transition(latents, velocity, axes, 5, out_dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, base.to(torch.bfloat16))
    excluded, _ = run_first_transition(latents, velocity, axes, 5, smoothing_padding="exclude")
    assert torch.equal(excluded[..., 1:-1, 1:-1], base[..., 1:-1, 1:-1])
    assert not torch.equal(excluded[..., 0, :], base[..., 0, :])
    fresh = StageSchedule(12, "hunyuan_video", 7.0)
    x0 = x0_from_velocity(latents, velocity, fresh.x0_sigma(3))
    precomputed, _ = run_first_transition(latents, velocity, axes, 5, x0=x0)
    assert torch.equal(precomputed, base)


def test_later_transitions_skip_smoothing():
    latents, velocity, axes = small_transition_setup(batch=1)
    schedule = StageSchedule(12, "hunyuan_video", 7.0)
    schedule.begin_transition(3)
    src = [len(a) for a in axes[1]]
    x = torch.randn(1, 3, *src)
    v = torch.randn(1, 3, *src)
    dst_axes = [axes[2][0], axes[2][1], axes[2][2]]
    out = transition(x, v, schedule=schedule, step=6, plan_axes=(axes[1], dst_axes),
                     target_shape=[len(a) for a in dst_axes], channels=3, seeds=0)
    info = schedule.history[-1]
    x0 = x - StageSchedule(12, "hunyuan_video", 9.0).sigmas[info.x0_sigma_index] * v
    up = resize_to_stage(x0, [len(a) for a in dst_axes], *stage_anchors(axes[1], dst_axes))
    sigma = schedule.sigmas[info.renoise_sigma_index]
    assert torch.equal(out, up * (1 - sigma) + coordinate_noise(*dst_axes, 3, 0) * sigma)


@pytest.mark.parametrize("change, fragment", [
    (dict(channels=4), "channels=4"),
    (dict(seeds=[1, 2, 3]), "seeds="),
    (dict(target_shape=(1, 1, 1)), "target_shape"),
    (dict(smoothing_padding="reflect"), "smoothing_padding"),
    (dict(out_dtype=torch.int64), "out_dtype"),
])
def test_transition_errors(change, fragment):
    latents, velocity, axes = small_transition_setup(batch=2)
    kwargs = dict(schedule=StageSchedule(12, "hunyuan_video", 7.0), step=3, plan_axes=(axes[0], axes[1]),
                  target_shape=[len(a) for a in axes[1]], channels=3, seeds=1)
    kwargs.update(change)
    with pytest.raises(ValueError, match="allowed") as err:
        transition(latents, velocity, **kwargs)
    assert fragment in str(err.value)


def test_resample_and_renoise_is_the_transition_without_bookkeeping():
    latents, velocity, axes = small_transition_setup(batch=2)
    out, schedule = run_first_transition(latents, velocity, axes, [3, 4])
    info = schedule.history[-1]
    x0 = latents - schedule.stage0_sigmas[info.x0_sigma_index] * velocity
    target = [len(a) for a in axes[1]]
    anchors = stage_anchors(axes[0], axes[1])
    sigma = schedule.sigmas[info.renoise_sigma_index]
    again = resample_and_renoise(x0, target, anchors, axes[1], sigma, [3, 4], smooth=True)
    assert torch.equal(again, out)
    unsmoothed = resample_and_renoise(x0, target, anchors, axes[1], sigma, [3, 4], smooth=False)
    assert not torch.equal(unsmoothed, out)
    # the reference rounds the resized x̂0 to the latents' dtype before smoothing and re-noising
    rounded = resample_and_renoise(x0, target, anchors, axes[1], sigma, [3, 4], smooth=False,
                                   x0_up_dtype=torch.bfloat16)
    expected = renoise(resize_to_stage(x0, target, *anchors).to(torch.bfloat16),
                       torch.cat([coordinate_noise(*axes[1], 3, s) for s in (3, 4)]), sigma)
    assert torch.equal(rounded, expected)
    with pytest.raises(ValueError, match="dst_axes"):
        resample_and_renoise(x0, target, anchors, axes[2], sigma, 3, smooth=True)
    with pytest.raises(ValueError, match="seeds"):
        resample_and_renoise(x0, target, anchors, axes[1], sigma, [1], smooth=True)


def test_transition_error_leaves_schedule_untouched():
    latents, velocity, axes = small_transition_setup(batch=2)
    schedule = StageSchedule(12, "hunyuan_video", 7.0)
    with pytest.raises(ValueError, match="seeds"):
        transition(latents, velocity, schedule=schedule, step=3, plan_axes=(axes[0], axes[1]),
                   target_shape=[len(a) for a in axes[1]], channels=3, seeds=[1])
    assert schedule.stage == 0 and schedule.history == []


# ------------------------------------------------------------------------------------ CUDA (skipped without a GPU)

def test_cuda_noise_resize_transition_match_cpu(cuda_device):
    axes = ([0, 7, 30], list(range(0, 90, 7)), list(range(0, 160, 3)))
    cpu, cpu_streams = coordinate_noise(*axes, 16, REFERENCE_NOISE_SEED, return_streams=True)
    gpu, gpu_streams = coordinate_noise(*axes, 16, REFERENCE_NOISE_SEED, device=cuda_device, return_streams=True)
    for name in ("base", "h1", "h2"):
        assert torch.equal(gpu_streams[name].cpu(), cpu_streams[name]), name
    assert_verbose_allclose(gpu_streams["noise_f64"].cpu(), cpu_streams["noise_f64"], atol=1e-12, name="f64")
    assert_verbose_allclose(gpu.cpu(), cpu, atol=1e-6, name="f32 noise")
    latents, velocity, axes3 = small_transition_setup(batch=2)
    out_cpu, _ = run_first_transition(latents, velocity, axes3, [1, 2])
    out_gpu, _ = run_first_transition(latents.to(cuda_device), velocity.to(cuda_device), axes3, [1, 2])
    assert out_gpu.device.type == "cuda"
    assert_verbose_allclose(out_gpu.cpu(), out_cpu, atol=2e-5, name="transition cuda vs cpu")


def test_timestep_lookup_rules():
    from dvg_engine.sampling import _index_for_timestep
    ts = torch.tensor([1000.0, 900.0, 900.0, 800.0, 700.00005, 600.0])
    assert _index_for_timestep(ts, torch.tensor(900.0), approximate=False) == 2  # several exact: the second
    assert _index_for_timestep(ts, torch.tensor(800.0), approximate=False) == 3
    assert _index_for_timestep(ts, torch.tensor(700.0), approximate=True) == 4  # within 1e-4
    assert _index_for_timestep(ts, torch.tensor(640.0), approximate=True) == 5  # nearest
    with pytest.raises(ValueError, match="timestep=640.0 is not in the current schedule"):
        _index_for_timestep(ts, torch.tensor(640.0), approximate=False)


def test_sampling_imports_neither_diffusers_nor_triton():
    import subprocess
    import sys
    code = ("import sys, dvg_engine.sampling; "
            "bad = [m for m in ('diffusers', 'triton') if m in sys.modules]; "
            "sys.exit('imported: ' + ', '.join(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout
