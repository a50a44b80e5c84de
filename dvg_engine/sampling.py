"""DVG sampling math as plain torch functions: the references the fused kernels must match.

Everything here follows dvg-spec.md §9–§12 (section numbers below refer to it) and imports neither
diffusers nor triton.

* `flow_sigmas`                 — the flow-matching σ / timestep schedule of one shift (§12.1).
* `x0_from_velocity`            — the clean-latent prediction x̂0 = x − σ·v (§12.3 step 1).
* `stage_anchors`               — index in the next stage of every source coordinate (§9).
* `resize_to_stage`             — the default "temporal_interp_spatial_restore" resize (§9).
* `smooth_first_transition`     — the 0→1 3×3 blur blend (§10), with the Q8 option.
* `coordinate_noise`            — the coordinate-bound Gaussian field (§11).
* `transition_seed`             — the noise seed of one sample (Q1 option).
* `renoise`                     — x = (1 − σ)·x̂0_up + σ·ε (§12.3 step 7).
* `StageSchedule`               — per-stage re-shifted schedules and step bookkeeping (§12.2–§12.3);
                                  `begin_transition` returns a `TransitionInfo`.
* `resample_and_renoise`        — resize → (0→1) smoothing → noise → re-noise: the reference of the
                                  fused resample + re-noise op (no bookkeeping).
* `transition`                  — x̂0 → bookkeeping → `resample_and_renoise`, one call.
* `default_transition_steps`, `validate_anchors` — small helpers shared with the ops and the engine.

Tensors are `[B, C, T, H, W]`. Axes are full-grid coordinates (dvg-spec §8): the same full-grid
position gets the same noise at every stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from dvg_engine._checks import check_choice, check_float, check_int, check_tensor, fail
from dvg_engine.config import REFERENCE_NOISE_SEED, REFERENCE_STAGE_SHIFTS

__all__ = ["MODELS", "REFERENCE_NOISE_SEED", "REFERENCE_STAGE_SHIFTS", "NOISE_CONSTANTS", "FINAL_STEP_ERROR",
           "flow_sigmas", "x0_from_velocity", "stage_anchors", "validate_anchors", "resize_to_stage",
           "smooth_first_transition", "coordinate_noise", "transition_seed", "renoise", "default_transition_steps",
           "TransitionInfo", "StageSchedule", "resample_and_renoise", "transition"]

MODELS = ("hunyuan_video", "hunyuan_video_1_5")
TRANSITION_RATES = (0.28, 0.50, 0.72)
NUM_STAGES = 4
SMOOTHING_WEIGHT = 0.3
FINAL_STEP_ERROR = "DVG transition cannot occur at the final sampling step"

# §11 hash constants, unsigned as the spec writes them. torch holds int64, so they enter tensor math as
# the two's-complement value with the same 64 bits (`_signed64`): multiplication mod 2^64 is identical.
_MASK64 = (1 << 64) - 1
NOISE_CONSTANTS = {
    "t_mult": 0x9E3779B185EBCA87,
    "h_mult": 0xC2B2AE3D27D4EB4F,
    "w_mult": 0x165667B19E3779F9,
    "c_mult": 0x85EBCA77C2B2AE63,
    "seed_mult": 0x27D4EB2F165667C5,
    "second_stream_offset": 0x9E3779B97F4A7C15,
    "mix_mult_1": 0xBF58476D1CE4E5B9,
    "mix_mult_2": 0x94D049BB133111EB,
}
_LOW53 = (1 << 53) - 1
_TWO53 = float(1 << 53)
_U_CLAMP = 1e-12


def _signed64(value: int) -> int:
    """The int64 (two's complement) reading of the low 64 bits of a Python int."""
    value &= _MASK64
    return value - (1 << 64) if value >= (1 << 63) else value


def _scalar32(name: str, value: Union[float, torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-d float32 tensor of `value`. A CPU one is left on the CPU: torch passes a 0-d CPU tensor to a
    CUDA kernel as a host scalar, whereas copying it to the GPU would be a host-to-device transfer per
    call in the step loop."""
    scalar = torch.as_tensor(value, dtype=torch.float32)
    if scalar.dim() != 0:
        fail(name, value, "a scalar (float or 0-d tensor)")
    if scalar.device.type != "cpu" and scalar.device != device:
        scalar = scalar.to(device)
    return scalar


def _normalize_model(model: str) -> str:
    aliases = {"hunyuan-video": "hunyuan_video", "hunyuan-video-1.5": "hunyuan_video_1_5"}
    model = aliases.get(model, model) if isinstance(model, str) else model
    return check_choice("model", model, MODELS)


# ---------------------------------------------------------------------------------------------------
# §12.1 schedule and x̂0
# ---------------------------------------------------------------------------------------------------

def flow_sigmas(num_steps: int, shift: float, model: str = "hunyuan_video") -> Tuple[torch.Tensor, torch.Tensor]:
    """Flow-matching schedule of one shift (dvg-spec §12.1).

    Returns `sigmas: (num_steps + 1,) float32` from 1 down to 0 and `timesteps: (num_steps,) float32`
    = sigmas[:-1]·1000, on the CPU.

    The arithmetic is float32 in the reference's order: that reproduces every array of
    parity/schedule.json bit for bit on this CPU, whereas a float64 computation cast to float32 is
    off by one ulp in about a third of the entries — and the HunyuanVideo-1.5 timestep lookups
    (§12.3) compare timesteps for exact equality, so bit-exactness matters downstream.
    HunyuanVideo-1.5's scheduler skips the shift formula when shift == 1; HunyuanVideo applies it.
    """
    num_steps = check_int("num_steps", num_steps, minimum=1)
    shift = check_float("shift", shift, low=0.0, high=float("inf"), low_open=True, high_open=True)
    model = _normalize_model(model)
    raw = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)
    if model == "hunyuan_video_1_5" and shift == 1.0:
        sigmas = raw
    else:
        sigmas = shift * raw / (1 + (shift - 1) * raw)
    timesteps = sigmas[:-1] * 1000
    return sigmas, timesteps


def x0_from_velocity(latents: torch.Tensor, velocity: torch.Tensor,
                     sigma: Union[float, torch.Tensor]) -> torch.Tensor:
    """Clean-latent prediction x̂0 = x + v·(0 − σ) = x − σ·v (dvg-spec §12.3 step 1).

    latents, velocity: (B, C, T, H, W), any float dtype (upcast to float32, as the reference's Euler
    step does); sigma: a Python float or a 0-d tensor (its float32 value is used).
    Returns (B, C, T, H, W) float32.
    """
    check_tensor("latents", latents)
    check_tensor("velocity", velocity)
    if latents.shape != velocity.shape:
        fail("velocity", velocity, f"the shape of latents {tuple(latents.shape)}")
    sigma32 = _scalar32("sigma", sigma, latents.device)
    # 0 − σ is exact, so this equals the reference's x + v·(σ[N] − σ[j]) bit for bit.
    return latents.float() + velocity.float() * (-sigma32)


# ---------------------------------------------------------------------------------------------------
# §9 resize
# ---------------------------------------------------------------------------------------------------

AxesLike = Sequence[Sequence[int]]


def _as_int_list(name: str, values) -> List[int]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.is_floating_point() or values.is_complex():
            fail(name, values, "a 1-D integer tensor or a sequence of ints")
        return [int(v) for v in values.tolist()]
    try:
        out = [check_int(f"{name}[{i}]", v) for i, v in enumerate(values)]
    except TypeError:
        fail(name, values, "a sequence of ints")
    return out


def validate_anchors(name: str, anchors, source_size: int, target_size: int) -> List[int]:
    """Checks one dimension's anchors: `source_size` ints, strictly increasing, first 0, last
    `target_size − 1` (dvg-spec §9) — except that a single source coordinate is the anchor [0]: a
    nested axis of size 1 is [0] (§8), whatever the size of the next stage (the frame is repeated).
    Returns them as a list of ints."""
    anchors = _as_int_list(name, anchors)
    if source_size == 1:
        if anchors != [0] or target_size < 1:
            fail(name, anchors, f"[0] (one source coordinate, target size {target_size})")
        return anchors
    allowed = (f"{source_size} strictly increasing indices into the target size {target_size}, "
               f"first 0 and last {target_size - 1}")
    if len(anchors) != source_size or source_size < 1 or source_size > target_size:
        fail(name, anchors, allowed)
    if anchors[0] != 0 or anchors[-1] != target_size - 1 or any(b <= a for a, b in zip(anchors, anchors[1:])):
        fail(name, anchors, allowed)
    return anchors


def stage_anchors(src_axes: AxesLike, dst_axes: AxesLike) -> Tuple[List[int], List[int], List[int]]:
    """Anchor indices of a transition (dvg-spec §9).

    src_axes, dst_axes: (axis_t, axis_h, axis_w) of the current and the next stage, each a strictly
    increasing sequence of full-grid coordinates, every source coordinate present in the target.
    Returns (anchor_t, anchor_h, anchor_w): for each source coordinate, its index in the target axis.
    """
    if len(src_axes) != 3:
        fail("src_axes", src_axes, "three axes (t, h, w)")
    if len(dst_axes) != 3:
        fail("dst_axes", dst_axes, "three axes (t, h, w)")
    out = []
    for dim, src, dst in zip("thw", src_axes, dst_axes):
        src = _as_int_list(f"src_axes[{dim}]", src)
        dst = _as_int_list(f"dst_axes[{dim}]", dst)
        for name, axis in ((f"src_axes[{dim}]", src), (f"dst_axes[{dim}]", dst)):
            if not axis or any(b <= a for a, b in zip(axis, axis[1:])):
                fail(name, axis, "a non-empty, strictly increasing list of coordinates")
        position = {c: i for i, c in enumerate(dst)}
        missing = [c for c in src if c not in position]
        if missing:
            fail(f"src_axes[{dim}]", src, f"coordinates all present in dst_axes[{dim}] (missing {missing[:5]})")
        anchors = [position[c] for c in src]
        out.append(validate_anchors(f"anchor_{dim}", anchors, len(src), len(dst)))
    return out[0], out[1], out[2]


def resize_to_stage(x0: torch.Tensor, target_shape: Sequence[int], anchor_t, anchor_h, anchor_w, *,
                    upcast: bool = True) -> torch.Tensor:
    """The default "temporal_interp_spatial_restore" resize of x̂0 to the next stage (dvg-spec §9).

    x0: (B, C, t_s, h_s, w_s); target_shape: (t_d, h_d, w_d) with each ≥ the source size;
    anchor_t/h/w: the index in the target of every source coordinate (see `stage_anchors`).
    Returns (B, C, t_d, h_d, w_d), contiguous, in x0's dtype.

    1. per frame, area resize (adaptive average pooling) of (h_s, w_s) to (h_d, w_d);
    2. the source values are written back exactly at the anchor rows × anchor columns;
    3. temporally, each target frame p lerps between the frames of the anchors around it with
       w = (p − a_l)/max(a_r − a_l, 1) in float32 (0 before the first anchor, 1 after the last), using
       torch.lerp, whose formula reproduces the anchor frames exactly; one source frame is repeated.

    upcast=True computes in float32 (the reference's dtype) and casts the result back; False computes
    in x0's dtype. Everything is vectorised (one pool, one indexed write, two gathers, one lerp).
    """
    check_tensor("x0", x0, ndim=5)
    if not x0.is_floating_point():
        fail("x0", x0, "a floating-point tensor")
    if len(target_shape) != 3:
        fail("target_shape", target_shape, "three sizes (t, h, w)")
    t_d, h_d, w_d = (check_int(f"target_shape[{i}]", v, minimum=1) for i, v in enumerate(target_shape))
    batch, channels, t_s, h_s, w_s = x0.shape
    for dim, src, dst in (("t", t_s, t_d), ("h", h_s, h_d), ("w", w_s, w_d)):
        if src > dst:
            fail("target_shape", tuple(target_shape), f"sizes ≥ the source sizes {(t_s, h_s, w_s)} (dimension {dim})")
    anchor_t = validate_anchors("anchor_t", anchor_t, t_s, t_d)
    anchor_h = validate_anchors("anchor_h", anchor_h, h_s, h_d)
    anchor_w = validate_anchors("anchor_w", anchor_w, w_s, w_d)

    out_dtype = x0.dtype
    work = x0.float() if upcast else x0
    device = x0.device

    if (h_s, w_s) != (h_d, w_d):
        frames = work.reshape(batch * channels * t_s, h_s, w_s)
        spatial = F.adaptive_avg_pool2d(frames, (h_d, w_d)).reshape(batch, channels, t_s, h_d, w_d)
        rows = torch.tensor(anchor_h, dtype=torch.long, device=device)
        cols = torch.tensor(anchor_w, dtype=torch.long, device=device)
        spatial[:, :, :, rows[:, None], cols[None, :]] = work
    else:
        # anchors are then the identity, and the mean of one element is that element
        spatial = work

    if t_s == t_d:
        result = spatial
    elif t_s == 1:
        result = spatial.expand(batch, channels, t_d, h_d, w_d)
    else:
        anchors = torch.tensor(anchor_t, dtype=torch.long, device=device)
        positions = torch.arange(t_d, device=device)
        left = (torch.searchsorted(anchors, positions, right=True) - 1).clamp(0, t_s - 2)
        right = left + 1
        a_left, a_right = anchors[left], anchors[right]
        weight = (positions - a_left).float() / (a_right - a_left).clamp(min=1).float()
        weight = torch.where(positions <= anchors[0], torch.zeros_like(weight), weight)
        weight = torch.where(positions >= anchors[-1], torch.ones_like(weight), weight)
        start = spatial.index_select(2, left)
        end = spatial.index_select(2, right)
        result = torch.lerp(start, end, weight.to(start.dtype).view(1, 1, t_d, 1, 1))
    result = result.contiguous().to(out_dtype)
    # same-shape resizes would otherwise hand back x0 itself; callers (and custom ops) expect a new tensor
    return result.clone() if result.data_ptr() == x0.data_ptr() else result


# ---------------------------------------------------------------------------------------------------
# §10 smoothing
# ---------------------------------------------------------------------------------------------------

def smooth_first_transition(x: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """The 0→1 smoothing (dvg-spec §10): x ← 0.7·x + 0.3·avg3×3(x), per frame and channel.

    x: (B, C, T, H, W). Returns the same shape and dtype (math in float32).
    padding="zeros" (reference): the 3×3 pool has zero padding 1 and always divides by 9, so border
    values are pulled toward 0 (quirk Q8). padding="exclude": the mean is over the in-frame pixels of
    the window only (4 at corners, 6 on edges), which removes the border darkening.
    """
    check_tensor("x", x, ndim=5)
    check_choice("padding", padding, ("zeros", "exclude"))
    batch, channels, frames, height, width = x.shape
    work = x.float().reshape(batch, channels * frames, height, width)
    pooled = F.avg_pool2d(work, kernel_size=3, stride=1, padding=1, count_include_pad=(padding == "zeros"))
    blended = (1.0 - SMOOTHING_WEIGHT) * work + SMOOTHING_WEIGHT * pooled
    return blended.reshape(batch, channels, frames, height, width).to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# §11 coordinate noise
# ---------------------------------------------------------------------------------------------------

def _mix64_(x: torch.Tensor) -> torch.Tensor:
    """The §11 mixer, in place on an int64 tensor. torch's int64 `>>` is arithmetic (sign-propagating)
    and `*` wraps mod 2^64: exactly the reference's arithmetic."""
    x ^= x >> 30
    x *= _signed64(NOISE_CONSTANTS["mix_mult_1"])
    x ^= x >> 27
    x *= _signed64(NOISE_CONSTANTS["mix_mult_2"])
    x ^= x >> 31
    return x


def _uniform_from_hash(h: torch.Tensor) -> torch.Tensor:
    # (low 53 bits) + 0.5 rounds to nearest in float64 for values ≥ 2^52, as in the reference.
    u = (h & _LOW53).to(torch.float64)
    u += 0.5
    u /= _TWO53
    return u.clamp_(_U_CLAMP, 1.0 - _U_CLAMP)


def coordinate_noise(axis_t, axis_h, axis_w, channels: int, seed: int, *, dtype: torch.dtype = torch.float32,
                     device: Optional[Union[str, torch.device]] = None, return_streams: bool = False):
    """Coordinate-bound Gaussian noise (dvg-spec §11).

    axis_t, axis_h, axis_w: full-grid coordinates of the stage (ints ≥ 0); channels: C ≥ 1; seed: any
    Python int (taken mod 2^64, so negative seeds are fine).
    Returns noise: (1, C, |axis_t|, |axis_h|, |axis_w|) in `dtype` on `device`; with
    return_streams=True, (noise, streams) where streams holds "base", "h1", "h2" ((C, t, h, w) int64,
    the two's complement of the 64-bit hash values) and "noise_f64" (the float64 field before the cast).

    base = t·K_T + h·K_H + w·K_W + c·K_C + seed·K_S (mod 2^64); h1 = mix(base), h2 = mix(base + G);
    u = ((h & (2^53 − 1)) + 0.5)/2^53 clamped to [1e-12, 1 − 1e-12]; ε = sqrt(−2 ln u1)·cos(2π u2)
    in float64, then cast. Each value depends only on (t, h, w, c, seed), so a full-grid position has
    the same noise at every stage and in every run, on every device.

    Unlike the reference, nothing is cached on disk: the reference's cache under
    ./coordinate_noise_cache keys files by coordinates only, so a field first written in bfloat16 is
    reused rounded by later float32 runs (quirk Q9); the field is cheap to recompute.
    """
    axes = []
    for name, axis in (("axis_t", axis_t), ("axis_h", axis_h), ("axis_w", axis_w)):
        axis = _as_int_list(name, axis)
        if not axis or min(axis) < 0:
            fail(name, axis, "a non-empty sequence of full-grid coordinates ≥ 0")
        axes.append(axis)
    channels = check_int("channels", channels, minimum=1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        fail("seed", seed, "a Python int")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        fail("dtype", dtype, "a floating-point torch.dtype")
    device = torch.device(device) if device is not None else torch.device("cpu")

    def term(values: List[int], key: str, shape: Tuple[int, ...]) -> torch.Tensor:
        # Products of Python ints reduced mod 2^64 on the host are exact; the tensor then only adds.
        mult = NOISE_CONSTANTS[key]
        return torch.tensor([_signed64(v * mult) for v in values], dtype=torch.int64, device=device).view(shape)

    t_term = term(axes[0], "t_mult", (1, -1, 1, 1))
    h_term = term(axes[1], "h_mult", (1, 1, -1, 1))
    w_term = term(axes[2], "w_mult", (1, 1, 1, -1))
    c_term = term(list(range(channels)), "c_mult", (-1, 1, 1, 1))
    seed_term = _signed64(seed * NOISE_CONSTANTS["seed_mult"])
    spatial_base = (t_term + seed_term) + (h_term + w_term)
    offset = _signed64(NOISE_CONSTANTS["second_stream_offset"])
    shape = spatial_base.shape[1:]
    noise = torch.empty((1, channels) + tuple(shape), dtype=dtype, device=device)
    if return_streams:
        streams = {name: torch.empty((channels,) + tuple(shape), dtype=torch.int64, device=device)
                   for name in ("base", "h1", "h2")}
        streams["noise_f64"] = torch.empty((1, channels) + tuple(shape), dtype=torch.float64, device=device)
    # One channel at a time, in place: the whole-field int64 temporaries of a 720p field are ~60 MB
    # each, and allocating a dozen of them costs more than the arithmetic (3x slower measured).
    for c in range(channels):
        base = spatial_base[0] + c_term[c, 0]
        h1 = _mix64_(base.clone())
        h2 = _mix64_(base + offset)
        if return_streams:
            streams["base"][c], streams["h1"][c], streams["h2"][c] = base, h1, h2
        radius = _uniform_from_hash(h1).log_().mul_(-2.0).sqrt_()
        angle = _uniform_from_hash(h2).mul_(2.0 * math.pi).cos_()
        value = radius.mul_(angle)
        if return_streams:
            streams["noise_f64"][0, c] = value
        noise[0, c] = value
    if return_streams:
        return noise, streams
    return noise


def transition_seed(noise_seed_mode: str, user_seed: Optional[int], sample_index: int = 0, *,
                    reference_seed: int = REFERENCE_NOISE_SEED) -> int:
    """The transition-noise seed of one sample (quirk Q1).

    noise_seed_mode="reference": `reference_seed` (12345 by default) for every video and every sample,
    as the published code does. "seeded": a deterministic function of the sample's own generator seed
    `user_seed + sample_index` — the seeds HunyuanVideo gives the videos of one prompt — scrambled with
    the §11 mixer, `mix64((user_seed + sample_index)·K_S + G)`, returned as a signed 64-bit int. So a
    sample's transition noise is reproducible from its seed, and differs between seeds and samples.
    """
    check_choice("noise_seed_mode", noise_seed_mode, ("reference", "seeded"))
    sample_index = check_int("sample_index", sample_index, minimum=0)
    if noise_seed_mode == "reference":
        if isinstance(reference_seed, bool) or not isinstance(reference_seed, int):
            fail("reference_seed", reference_seed, "a Python int")
        return reference_seed
    if isinstance(user_seed, bool) or not isinstance(user_seed, int):
        fail("user_seed", user_seed, "a Python int (seeded transition noise derives from the user's seed)")
    x = (user_seed + sample_index) * NOISE_CONSTANTS["seed_mult"] + NOISE_CONSTANTS["second_stream_offset"]
    return _signed64(_mix64_int(_signed64(x)))


def _mix64_int(x: int) -> int:
    """`_mix64_` on one Python int (signed 64-bit in, signed 64-bit out)."""
    x = _signed64((x ^ (x >> 30)) * NOISE_CONSTANTS["mix_mult_1"])
    x = _signed64((x ^ (x >> 27)) * NOISE_CONSTANTS["mix_mult_2"])
    return x ^ (x >> 31)


def renoise(x0_up: torch.Tensor, noise: torch.Tensor, sigma: Union[float, torch.Tensor]) -> torch.Tensor:
    """Re-noise (dvg-spec §12.3 step 7): x0_up·(1 − σ) + ε·σ in float32.

    x0_up: (B, C, T, H, W); noise: broadcastable to it ((1, C, T, H, W) or (B, C, T, H, W));
    sigma: a float or 0-d tensor (its float32 value). Returns float32; the caller casts to the
    pipeline's dtype. σ = 0 returns x0_up exactly (ε·0 = 0 and x·1 = x for finite ε).
    """
    check_tensor("x0_up", x0_up, ndim=5)
    check_tensor("noise", noise, ndim=5)
    try:
        torch.broadcast_shapes(noise.shape, x0_up.shape)
    except RuntimeError:
        fail("noise", noise, f"a tensor broadcastable to x0_up's shape {tuple(x0_up.shape)}")
    sigma32 = _scalar32("sigma", sigma, x0_up.device)
    return x0_up.float() * (1 - sigma32) + noise.float() * sigma32


# ---------------------------------------------------------------------------------------------------
# §12.2–§12.3 step bookkeeping
# ---------------------------------------------------------------------------------------------------

def default_transition_steps(num_steps: int) -> Tuple[int, ...]:
    """The sorted set {int(N·0.28), int(N·0.50), int(N·0.72)} (dvg-spec §4; N=4 gives (1, 2))."""
    num_steps = check_int("num_steps", num_steps, minimum=1)
    return tuple(sorted({int(num_steps * rate) for rate in TRANSITION_RATES}))


def _index_for_timestep(timesteps: torch.Tensor, timestep: torch.Tensor, approximate: bool) -> int:
    """Index of `timestep` in `timesteps` the way the reference schedulers find it: exact equality
    first, and when several entries match, the second one; with `approximate` (HunyuanVideo-1.5 only)
    then within 1e-4, else the nearest entry."""
    matches = (timesteps == timestep).nonzero().flatten()
    if matches.numel() == 0 and approximate:
        matches = ((timesteps - timestep).abs() < 1e-4).nonzero().flatten()
        if matches.numel() == 0:
            return int((timesteps - timestep).abs().argmin())
    if matches.numel() == 0:
        raise ValueError(f"timestep={float(timestep)!r} is not in the current schedule; allowed: one of its "
                         f"{timesteps.numel()} timesteps")
    return int(matches[1] if matches.numel() > 1 else matches[0])


@dataclass(frozen=True)
class TransitionInfo:
    """What one transition did (the fields of parity/schedule.json's `transitions`). σ and timesteps
    are the exact double values of the float32 schedule entries."""

    step: int
    from_stage: int
    to_stage: int
    model_timestep: float
    x0_sigma_index: int
    x0_sigma: float
    shift_before: float
    shift_after: float
    renoise_sigma_index: int
    renoise_sigma: float
    renoise_timestep: float


class StageSchedule:
    """The per-stage re-shifted schedules of one DVG generation and its step bookkeeping (§12.2–§12.3).

    Stage 0 uses the pipeline's own shift `stage0_shift`; stage k ≥ 1 uses `stage_shifts[k]` (entry 0 is
    never read). Loop per step i = 0..N−1: run the model at `model_timestep(i)`; then either
    `is_transition(i)` → `begin_transition(i)` (or the composed `transition(...)`), which skips the
    Euler update of step i, or `euler_step(x, v, i)`.

    model_timestep(i): HunyuanVideo → the current schedule's timesteps[i]. HunyuanVideo-1.5 → the
    stage-0 array captured before the loop (quirk Q5), unless hv15_timesteps="reshifted", which uses
    the current (re-shifted) schedule as HunyuanVideo does.

    Attributes: num_steps, model, stage0_shift, stage_shifts, effective_stage_shifts (stage 0's own, then
    stage_shifts[1:]), stage, shift, sigmas ((N+1,) float32), timesteps ((N,) float32), stage0_sigmas,
    stage0_timesteps, transition_steps, history (list of TransitionInfo), stage_schedules (one dict per
    installed stage: stage, shift, sigmas, timesteps, set_at_step).
    """

    def __init__(self, num_steps: int, model: str, stage0_shift: float,
                 stage_shifts: Sequence[float] = REFERENCE_STAGE_SHIFTS, *,
                 transition_steps: Optional[Sequence[int]] = None, hv15_timesteps: str = "reference") -> None:
        self.num_steps = check_int("num_steps", num_steps, minimum=1)
        self.model = _normalize_model(model)
        stage0_shift = check_float("stage0_shift", stage0_shift, low=0.0, high=float("inf"), low_open=True,
                                   high_open=True)
        shifts = tuple(stage_shifts)
        if len(shifts) != NUM_STAGES:
            fail("stage_shifts", stage_shifts, f"{NUM_STAGES} positive numbers (entry 0 unused)")
        shifts = tuple(check_float(f"stage_shifts[{k}]", s, low=0.0, high=float("inf"), low_open=True,
                                   high_open=True) for k, s in enumerate(shifts))
        self.stage0_shift = stage0_shift
        self.stage_shifts = shifts
        self.effective_stage_shifts = (stage0_shift,) + shifts[1:]
        self.hv15_timesteps = check_choice("hv15_timesteps", hv15_timesteps, ("reference", "reshifted"))
        if transition_steps is None:
            transition_steps = default_transition_steps(self.num_steps)
        steps = sorted({check_int("transition_steps[]", s, minimum=0, maximum=self.num_steps - 1)
                        for s in transition_steps})
        self.transition_steps: Tuple[int, ...] = tuple(steps)
        self.stage = 0
        self.shift = stage0_shift
        self.sigmas, self.timesteps = flow_sigmas(self.num_steps, stage0_shift, self.model)
        self.stage0_sigmas, self.stage0_timesteps = self.sigmas, self.timesteps
        self.history: List[TransitionInfo] = []
        self.stage_schedules: List[Dict] = [dict(stage=0, shift=stage0_shift, sigmas=self.sigmas,
                                                 timesteps=self.timesteps, set_at_step=None)]

    def _check_step(self, i: int) -> int:
        return check_int("step", i, minimum=0, maximum=self.num_steps - 1)

    def _model_timestep_tensor(self, i: int) -> torch.Tensor:
        i = self._check_step(i)
        if self.model == "hunyuan_video_1_5" and self.hv15_timesteps == "reference":
            return self.stage0_timesteps[i]
        return self.timesteps[i]

    def model_timestep(self, i: int) -> float:
        """The timestep the model receives at step i (exact value of a float32)."""
        return float(self._model_timestep_tensor(i))

    def is_transition(self, i: int) -> bool:
        """True when step i ends with a transition instead of an Euler update."""
        return self._check_step(i) in self.transition_steps and self.stage < NUM_STAGES - 1

    def x0_sigma_index(self, i: int) -> int:
        """Index j of σ used for x̂0 at step i: the model timestep looked up in the *current* schedule
        (exact match, the second of several; HunyuanVideo-1.5: then within 1e-4, else nearest)."""
        t = self._model_timestep_tensor(i)
        return _index_for_timestep(self.timesteps, t, approximate=self.model == "hunyuan_video_1_5")

    def x0_sigma(self, i: int) -> torch.Tensor:
        """σ[j] (0-d float32) of the current schedule for x̂0 at step i."""
        return self.sigmas[self.x0_sigma_index(i)]

    def reshift(self, to_stage: int, *, set_at_step: Optional[int] = None) -> None:
        """Installs stage `to_stage`'s schedule (shift stage_shifts[to_stage]) and makes it current."""
        to_stage = check_int("to_stage", to_stage, minimum=1, maximum=NUM_STAGES - 1)
        self.stage = to_stage
        self.shift = self.stage_shifts[to_stage]
        self.sigmas, self.timesteps = flow_sigmas(self.num_steps, self.shift, self.model)
        self.stage_schedules.append(dict(stage=to_stage, shift=self.shift, sigmas=self.sigmas,
                                         timesteps=self.timesteps, set_at_step=set_at_step))

    def renoise_sigma_index(self, i: int) -> int:
        """Index in the current schedule of timesteps[i + 1], found by exact lookup (= i + 1)."""
        i = self._check_step(i)
        if i + 1 >= self.num_steps:
            raise ValueError(FINAL_STEP_ERROR)
        return _index_for_timestep(self.timesteps, self.timesteps[i + 1], approximate=False)

    def renoise_sigma(self, i: int) -> torch.Tensor:
        """σ (0-d float32) of the current schedule the latents are re-noised to after a transition at
        step i (call after the re-shift)."""
        return self.sigmas[self.renoise_sigma_index(i)]

    def begin_transition(self, i: int) -> TransitionInfo:
        """Does the bookkeeping of the transition at step i: x̂0 σ from the old schedule, re-shift to
        the next stage, re-noise σ from the new one. Raises "DVG transition cannot occur at the final
        sampling step" when i is the last step. Returns (and appends to `history`) a TransitionInfo."""
        i = self._check_step(i)
        if not self.is_transition(i):
            raise ValueError(f"step={i} is not a transition step at stage {self.stage}; allowed: one of "
                             f"{list(self.transition_steps)} while the stage is < {NUM_STAGES - 1}")
        if i + 1 >= self.num_steps:
            raise ValueError(FINAL_STEP_ERROR)
        from_stage, shift_before = self.stage, self.shift
        model_timestep = self.model_timestep(i)
        x0_index = self.x0_sigma_index(i)
        x0_sigma = float(self.sigmas[x0_index])
        self.reshift(from_stage + 1, set_at_step=i)
        renoise_index = self.renoise_sigma_index(i)
        info = TransitionInfo(step=i, from_stage=from_stage, to_stage=from_stage + 1, model_timestep=model_timestep,
                              x0_sigma_index=x0_index, x0_sigma=x0_sigma, shift_before=shift_before,
                              shift_after=self.shift, renoise_sigma_index=renoise_index,
                              renoise_sigma=float(self.sigmas[renoise_index]),
                              renoise_timestep=float(self.timesteps[renoise_index]))
        self.history.append(info)
        return info

    def euler_step(self, x: torch.Tensor, v: torch.Tensor, i: int) -> torch.Tensor:
        """x + v·(σ[i+1] − σ[i]) of the current schedule, x and v upcast to float32; returns float32.
        (After a transition at step i−1 the reference's step index is i, so the index is the step.)"""
        i = self._check_step(i)
        if self.is_transition(i):
            raise ValueError(f"step={i} is a transition step at stage {self.stage}; allowed: a non-transition "
                             f"step (the Euler update of a transition step is skipped)")
        check_tensor("x", x)
        check_tensor("v", v)
        if x.shape != v.shape:
            fail("v", v, f"the shape of x {tuple(x.shape)}")
        dt = self.sigmas[i + 1] - self.sigmas[i]
        return x.float() + v.float() * dt


# ---------------------------------------------------------------------------------------------------
# the composed transition
# ---------------------------------------------------------------------------------------------------

def transition(latents: torch.Tensor, velocity: torch.Tensor, *, schedule: StageSchedule, step: int,
               plan_axes: Tuple[AxesLike, AxesLike], target_shape: Sequence[int], channels: int,
               seeds: Union[int, Sequence[int]], smoothing_padding: str = "zeros",
               out_dtype: torch.dtype = torch.float32, x0: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One DVG stage transition at step `step` (dvg-spec §12.3), the parity recipe.

    latents, velocity: (B, C, t_s, h_s, w_s) at the current stage; plan_axes: (src_axes, dst_axes),
    each (axis_t, axis_h, axis_w) of full-grid coordinates of the current and the next stage;
    target_shape: (t_d, h_d, w_d) = the lengths of dst_axes; channels: C; seeds: one transition-noise
    seed per sample (an int = the same for all; the reference uses 12345 for all, see
    `transition_seed`); x0: optionally the x̂0 already computed for planning (same shape as latents).
    Returns (B, C, t_d, h_d, w_d) in out_dtype. Advances `schedule` to the next stage.

    x̂0 = x − σ_old[j]·v → resize to the next stage, cast to the latents' dtype → (0→1 only) smoothing
    → coordinate noise of the next stage's axes per sample seed → x̂0_up·(1 − σ_new[i+1]) + ε·σ_new[i+1]
    in float32 → out_dtype.
    """
    check_tensor("latents", latents, ndim=5)
    check_tensor("velocity", velocity, ndim=5)
    if not isinstance(schedule, StageSchedule):
        fail("schedule", schedule, "a StageSchedule", TypeError)
    check_choice("smoothing_padding", smoothing_padding, ("zeros", "exclude"))
    if not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        fail("out_dtype", out_dtype, "a floating-point torch.dtype")
    batch = latents.shape[0]
    channels = check_int("channels", channels, minimum=1)
    if channels != latents.shape[1]:
        fail("channels", channels, f"the latents' channel count {latents.shape[1]}")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds] * batch
    seeds = list(seeds)
    if len(seeds) != batch or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        fail("seeds", seeds, f"an int or {batch} ints (one per sample)")
    if len(plan_axes) != 2:
        fail("plan_axes", plan_axes, "(src_axes, dst_axes)")
    src_axes, dst_axes = plan_axes
    anchors = stage_anchors(src_axes, dst_axes)
    src_shape = tuple(len(a) for a in src_axes)
    dst_shape = tuple(len(a) for a in dst_axes)
    if tuple(latents.shape[2:]) != src_shape:
        fail("latents", latents, f"the current stage's shape {src_shape} (from plan_axes[0])")
    if tuple(target_shape) != dst_shape:
        fail("target_shape", tuple(target_shape), f"the next stage's shape {dst_shape} (from plan_axes[1])")
    step = check_int("step", step, minimum=0)

    if x0 is None:
        x0 = x0_from_velocity(latents, velocity, schedule.x0_sigma(step))
    else:
        check_tensor("x0", x0, ndim=5)
        if x0.shape != latents.shape:
            fail("x0", x0, f"the shape of latents {tuple(latents.shape)}")
    info = schedule.begin_transition(step)
    return resample_and_renoise(x0, dst_shape, anchors, dst_axes, schedule.sigmas[info.renoise_sigma_index], seeds,
                                smooth=info.to_stage == 1, smoothing_padding=smoothing_padding,
                                out_dtype=out_dtype, x0_up_dtype=latents.dtype)


def resample_and_renoise(x0: torch.Tensor, target_shape: Sequence[int], anchors, dst_axes: AxesLike,
                         sigma: Union[float, torch.Tensor], seeds: Union[int, Sequence[int]], *, smooth: bool,
                         smoothing_padding: str = "zeros", out_dtype: torch.dtype = torch.float32,
                         x0_up_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Everything of a transition after x̂0, without the bookkeeping: the reference of the fused
    resample + re-noise op.

    x0: (B, C, t_s, h_s, w_s); target_shape: (t_d, h_d, w_d); anchors: (anchor_t, anchor_h, anchor_w)
    (see `stage_anchors`); dst_axes: the next stage's (axis_t, axis_h, axis_w) full-grid coordinates,
    of lengths target_shape; sigma: the re-noise σ (float or 0-d tensor, float32 value); seeds: an int
    or one per sample; smooth: apply the 0→1 smoothing (only for the transition into stage 1);
    x0_up_dtype: the dtype the resized x̂0 is rounded to before smoothing (the reference casts to the
    latents' dtype; None = float32, no rounding). Returns (B, C, t_d, h_d, w_d) in out_dtype.

    With per-sample plans the engine calls `StageSchedule.begin_transition` once per step and this
    function (or the fused op) once per sample, since the schedule is shared by the batch.
    """
    check_tensor("x0", x0, ndim=5)
    if len(anchors) != 3:
        fail("anchors", anchors, "(anchor_t, anchor_h, anchor_w)")
    if len(dst_axes) != 3 or tuple(len(a) for a in dst_axes) != tuple(target_shape):
        fail("dst_axes", dst_axes, f"three axes of lengths target_shape {tuple(target_shape)}")
    check_choice("smoothing_padding", smoothing_padding, ("zeros", "exclude"))
    if not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        fail("out_dtype", out_dtype, "a floating-point torch.dtype")
    batch, channels = x0.shape[:2]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds] * batch
    seeds = list(seeds)
    if len(seeds) != batch or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        fail("seeds", seeds, f"an int or {batch} ints (one per sample)")
    x0_up = resize_to_stage(x0.float(), target_shape, *anchors)
    if x0_up_dtype is not None:
        x0_up = x0_up.to(x0_up_dtype)
    if smooth:
        x0_up = smooth_first_transition(x0_up, padding=smoothing_padding)
    fields: Dict[int, torch.Tensor] = {}
    for seed in seeds:
        if seed not in fields:
            fields[seed] = coordinate_noise(*dst_axes, channels, seed, dtype=torch.float32, device=x0.device)
    # one shared field broadcasts over the batch (the reference's copies) without materialising them
    noise = fields[seeds[0]] if len(fields) == 1 else torch.cat([fields[s] for s in seeds], dim=0)
    return renoise(x0_up, noise, sigma).to(out_dtype)
