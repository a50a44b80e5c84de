"""Parity of the sampling references (dvg_engine.sampling) with the reference vectors: resize.json,
noise.json, schedule.json, transition.json (parity/README.md). Every case of every file is checked,
and the number checked is compared with the number in the file."""
import json

import numpy as np
import pytest
import torch

from _tolerances import assert_verbose_allclose
from dvg_engine import sampling
from dvg_engine.sampling import (NOISE_CONSTANTS, REFERENCE_NOISE_SEED, StageSchedule, coordinate_noise,
                                 default_transition_steps, flow_sigmas, resize_to_stage, smooth_first_transition,
                                 stage_anchors, transition)

RESIZE_ATOL = 2e-6
SIGMA_ATOL = 2e-7
NOISE_F64_ATOL = 1e-12
TRANSITION_ATOL = 2e-5


def _load(parity_path, name):
    with open(parity_path / name) as handle:
        return json.load(handle)


def test_resize_and_smoothing_parity(parity_path):
    cases = _load(parity_path, "resize.json")
    arrays = np.load(parity_path / "resize.npz")
    checked = smoothed_checked = 0
    for case in cases:
        key, src, dst = case["key"], case["from_stage"], case["to_stage"]
        axes = case["stage_axes"]
        assert [[len(a) for a in stage] for stage in axes] == case["stage_shapes"], key
        anchors = stage_anchors(axes[src], axes[dst])
        assert list(anchors) == [case["anchors"][d] for d in "thw"], key
        x0 = torch.from_numpy(arrays[f"{key}_input"])
        assert list(x0.shape) == case["input_shape"], key
        out = resize_to_stage(x0, case["output_shape"][2:], *anchors)
        expected = torch.from_numpy(arrays[f"{key}_output"])
        assert out.dtype == torch.float32 and out.is_contiguous()
        assert_verbose_allclose(out, expected, atol=RESIZE_ATOL, name=f"resize {key}")
        assert case["has_smoothed"] == (dst == 1) == (f"{key}_output_smoothed" in arrays), key
        if case["has_smoothed"]:
            smoothed = smooth_first_transition(out, padding="zeros")
            assert_verbose_allclose(smoothed, torch.from_numpy(arrays[f"{key}_output_smoothed"]),
                                    atol=RESIZE_ATOL, name=f"smoothing {key}")
            smoothed_checked += 1
        checked += 1
    assert checked == len(cases)
    assert smoothed_checked == sum(bool(c["has_smoothed"]) for c in cases)


def test_noise_parity(parity_path):
    spec = _load(parity_path, "noise.json")
    arrays = np.load(parity_path / "noise.npz")
    assert spec["default_seed"] == REFERENCE_NOISE_SEED
    assert set(spec["constants_int"]) == set(NOISE_CONSTANTS)
    for name, value in NOISE_CONSTANTS.items():
        assert spec["constants_int"][name] == value, name
        assert int(spec["constants_hex"][name], 16) == value, name
    checked = 0
    for case in spec["cases"]:
        key = case["key"]
        noise, streams = coordinate_noise(case["axis_t"], case["axis_h"], case["axis_w"], case["channels"],
                                          case["seed"], return_streams=True)
        assert list(noise.shape) == case["shape"], key
        for stream in ("base", "h1", "h2"):
            expected = torch.from_numpy(arrays[f"{key}_{stream}_i64"])
            assert torch.equal(streams[stream], expected), f"{key}: {stream} stream differs"
        assert_verbose_allclose(streams["noise_f64"], torch.from_numpy(arrays[f"{key}_noise_f64"]),
                                atol=NOISE_F64_ATOL, name=f"noise f64 {key}")
        assert noise.dtype == torch.float32
        assert torch.equal(noise, torch.from_numpy(arrays[f"{key}_noise_f32"])), f"{key}: f32 noise not exact"
        checked += 1
    assert checked == len(spec["cases"])

    batch = spec["batch_case"]
    expected = torch.from_numpy(arrays[batch["key"]])
    field = coordinate_noise(batch["axis_t"], batch["axis_h"], batch["axis_w"], batch["channels"], batch["seed"])
    assert torch.equal(field.expand(batch["batch_size"], *field.shape[1:]), expected)
    # the composed transition with the reference seed for every sample: a zero x̂0 leaves ε·σ_new, so the
    # result must be the recorded batch field times σ_new, bit for bit
    size = batch["batch_size"]
    dst_axes = (batch["axis_t"], batch["axis_h"], batch["axis_w"])
    src_axes = tuple([axis[0], axis[-1]] if len(axis) > 1 else axis for axis in dst_axes)
    schedule = StageSchedule(12, "hunyuan_video", 7.0)
    zeros = torch.zeros(size, batch["channels"], *(len(a) for a in src_axes))
    out = transition(zeros, zeros, schedule=schedule, step=3, plan_axes=(src_axes, dst_axes),
                     target_shape=[len(a) for a in dst_axes], channels=batch["channels"],
                     seeds=[batch["seed"]] * size)
    assert torch.equal(out, expected * schedule.sigmas[schedule.history[-1].renoise_sigma_index])


def _check_schedule_arrays(config, schedule):
    assert len(schedule.stage_schedules) == len(config["schedules"])
    for ours, theirs in zip(schedule.stage_schedules, config["schedules"]):
        assert ours["stage"] == theirs["stage"]
        assert ours["shift"] == theirs["shift"]
        assert ours["set_at_step"] == theirs["set_at_step"]
        assert_verbose_allclose(ours["sigmas"], torch.tensor(theirs["sigmas"], dtype=torch.float64),
                                atol=SIGMA_ATOL, name=f"sigmas stage {ours['stage']}")
        assert_verbose_allclose(ours["timesteps"] / 1000, torch.tensor(theirs["timesteps"], dtype=torch.float64) / 1000,
                                atol=SIGMA_ATOL, name=f"timesteps/1000 stage {ours['stage']}")


def _check_transition_info(info, expected, label):
    for name in ("step", "from_stage", "to_stage", "x0_sigma_index", "renoise_sigma_index"):
        assert getattr(info, name) == expected[name], f"{label}: {name} {getattr(info, name)} != {expected[name]}"
    for name in ("shift_before", "shift_after"):
        if name in expected:
            assert getattr(info, name) == expected[name], f"{label}: {name}"
    for name in ("x0_sigma", "renoise_sigma"):
        assert abs(getattr(info, name) - expected[name]) <= SIGMA_ATOL, f"{label}: {name}"
    for name in ("model_timestep", "renoise_timestep"):
        if name in expected:
            assert abs(getattr(info, name) - expected[name]) <= SIGMA_ATOL * 1000, f"{label}: {name}"


def test_schedule_parity(parity_path):
    configs = _load(parity_path, "schedule.json")
    checked = 0
    for config in configs:
        label = config["description"]
        n = config["num_steps"]
        assert list(default_transition_steps(n)) == config["transition_steps"], label
        schedule = StageSchedule(n, config["model"], config["stage0_flow_shift"], config["dvg_scheduler_shifts"],
                                 transition_steps=config["transition_steps"])
        assert list(schedule.effective_stage_shifts) == config["effective_stage_shifts"], label
        transitions = iter(config["transitions"])
        x = torch.linspace(-1.0, 1.0, 6).view(1, 1, 1, 2, 3)
        steps_checked = transitions_checked = 0
        assert [s["i"] for s in config["steps"]] == list(range(n)), label
        for expected in config["steps"]:
            i = expected["i"]
            where = f"{label} step {i}"
            assert schedule.stage == expected["stage"], where
            assert abs(schedule.model_timestep(i) - expected["model_timestep"]) <= SIGMA_ATOL * 1000, where
            kind = "transition" if schedule.is_transition(i) else "euler"
            assert kind == expected["kind"], where
            if kind == "transition":
                info = schedule.begin_transition(i)
                _check_transition_info(info, next(transitions), where)
                transitions_checked += 1
            else:
                assert expected["sigma_index"] == i, where
                sigma_from, sigma_to = schedule.sigmas[i], schedule.sigmas[i + 1]
                assert abs(float(sigma_from) - expected["sigma_from"]) <= SIGMA_ATOL, where
                assert abs(float(sigma_to) - expected["sigma_to"]) <= SIGMA_ATOL, where
                v = 0.1 * x
                stepped = schedule.euler_step(x, v, i)
                assert torch.equal(stepped, x + v * (sigma_to - sigma_from)), where
                x = stepped
            steps_checked += 1
        assert steps_checked == len(config["steps"]) == n
        assert transitions_checked == len(config["transitions"])
        assert [t.to_stage for t in schedule.history] == [t["to_stage"] for t in config["transitions"]]
        _check_schedule_arrays(config, schedule)
        checked += 1
    assert checked == len(configs)


def _schedule_at(case, step):
    """The schedule of this generation just before `step`: the bookkeeping of its earlier transitions replayed."""
    schedule = StageSchedule(case["num_steps"], case["model"], case["stage0_flow_shift"])
    for i in range(step):
        if schedule.is_transition(i):
            schedule.begin_transition(i)
    return schedule


def test_transition_parity(parity_path):
    cases = _load(parity_path, "transition.json")
    arrays = np.load(parity_path / "transition.npz")
    checked = 0
    for case in cases:
        key, step, src = case["key"], case["step"], case["from_stage"]
        schedule = _schedule_at(case, step)
        assert schedule.stage == src, key
        assert schedule.is_transition(step), key
        assert abs(schedule.model_timestep(step) - case["model_timestep"]) <= SIGMA_ATOL * 1000, key
        assert_verbose_allclose(schedule.sigmas, torch.tensor(case["sigmas_before"], dtype=torch.float64),
                                atol=SIGMA_ATOL, name=f"{key} sigmas_before")
        axes = case["stage_axes"]
        assert [[len(a) for a in stage] for stage in axes] == case["stage_shapes"], key
        latents = torch.from_numpy(arrays[f"{key}_latents"])
        velocity = torch.from_numpy(arrays[f"{key}_velocity"])
        new_latents = transition(latents, velocity, schedule=schedule, step=step, plan_axes=(axes[src], axes[src + 1]),
                                 target_shape=case["stage_shapes"][src + 1], channels=case["latent_channels"],
                                 seeds=[case["noise_seed"]] * latents.shape[0], out_dtype=torch.float32)
        info = schedule.history[-1]
        _check_transition_info(info, case, key)
        assert_verbose_allclose(schedule.sigmas, torch.tensor(case["sigmas_after"], dtype=torch.float64),
                                atol=SIGMA_ATOL, name=f"{key} sigmas_after")
        assert_verbose_allclose(new_latents, torch.from_numpy(arrays[f"{key}_new_latents"]),
                                atol=TRANSITION_ATOL, name=f"{key} new latents")
        checked += 1
    assert checked == len(cases)


@pytest.mark.parametrize("model", sampling.MODELS)
def test_flow_sigmas_parity_with_every_schedule(parity_path, model):
    """flow_sigmas alone, on every (model, N, shift) array recorded in schedule.json and transition.json."""
    arrays = []
    for config in _load(parity_path, "schedule.json"):
        for stage in config["schedules"]:
            arrays.append((config["model"], config["num_steps"], stage["shift"], stage["sigmas"], stage["timesteps"]))
    total = len(arrays)
    arrays = [a for a in arrays if a[0] == model]
    for m, n, shift, sigmas, timesteps in arrays:
        ours_sigmas, ours_timesteps = flow_sigmas(n, shift, m)
        assert ours_sigmas.dtype == ours_timesteps.dtype == torch.float32
        assert_verbose_allclose(ours_sigmas, torch.tensor(sigmas, dtype=torch.float64), atol=SIGMA_ATOL,
                                name=f"{m} N={n} shift={shift}")
        assert_verbose_allclose(ours_timesteps / 1000, torch.tensor(timesteps, dtype=torch.float64) / 1000,
                                atol=SIGMA_ATOL, name=f"{m} N={n} shift={shift} timesteps")
    assert total == sum(len(c["schedules"]) for c in _load(parity_path, "schedule.json"))


def test_transition_parity_cuda(parity_path, cuda_device):
    """The same references on CUDA tensors (noise hash, resize, smoothing, re-noise on the GPU)."""
    cases = _load(parity_path, "transition.json")
    arrays = np.load(parity_path / "transition.npz")
    checked = 0
    for case in cases:
        key, step, src = case["key"], case["step"], case["from_stage"]
        schedule = _schedule_at(case, step)
        axes = case["stage_axes"]
        latents = torch.from_numpy(arrays[f"{key}_latents"]).to(cuda_device)
        velocity = torch.from_numpy(arrays[f"{key}_velocity"]).to(cuda_device)
        out = transition(latents, velocity, schedule=schedule, step=step, plan_axes=(axes[src], axes[src + 1]),
                         target_shape=case["stage_shapes"][src + 1], channels=case["latent_channels"],
                         seeds=case["noise_seed"])
        assert out.device.type == "cuda"
        assert_verbose_allclose(out.cpu(), torch.from_numpy(arrays[f"{key}_new_latents"]), atol=TRANSITION_ATOL,
                                name=f"{key} new latents (cuda)")
        checked += 1
    assert checked == len(cases)
