"""The two DVG demand metrics of a clean-latent prediction x̂0 (dvg-spec.md §6), in float32 as the
reference computes them.

x0: (B, C, T, H, W), the x̂0 at the first transition on the stage-0 grid.

* Spatial demand S ("spatial_fft_energy_above_50"): standardise each (b, c) over (T, H, W) with the
  unbiased std (clamped ≥ 1e-6), take the orthonormal 2-D DFT of every frame, shift DC to the centre,
  and return the share of the power in bins with radius ≥ 0.5 on the f32 grid
  sqrt(linspace(-1,1,H)² + linspace(-1,1,W)²) / sqrt(2). Raw, not normalised (white noise ≈ 0.64).
* Temporal flow f ("flow_mag"): average channels, standardise every frame over (H, W), and solve one
  global Lucas–Kanade system per consecutive frame pair with Sobel/8 gradients (zero padding);
  f = mean over pairs of |(u, v)|, and M = f / (1 + f) in double.

`plan_scope="sample"` computes both for each sample alone (for B = 1 this is the reference);
`"batch"` pools the batch exactly as the reference does (power sums and the pair mean over all samples).
Both metrics stay on x0's device until `compute_demands` reads them back once.

Deviation: the reference silently replaces the metrics by 0 when anything raises; here malformed
input (not 5-D, not floating point, non-finite) raises a ValueError naming the problem instead.
Fewer than 2 frames — or a single-pixel frame, where the unbiased std is undefined and the reference
would produce NaN — gives S = M = 0 with `used=False`, as the reference does for t0 < 2.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F

from ._checks import check_choice, fail
from .planner import PLAN_SCOPES, demand_split

HIGH_BAND_RADIUS = 0.5
STD_FLOOR = 1e-6
POWER_FLOOR = 1e-12
LK_DET_FLOOR = 1e-6


@dataclass(frozen=True)
class Demands:
    """Demands of one sample (or of the pooled batch): S spatial demand, f raw flow magnitude, M = f/(1+f),
    (m_s, m_t) the softmax split the scorer uses, `used` False when the metrics were skipped (t0 < 2)."""

    S: float
    f: float
    M: float
    m_s: float
    m_t: float
    used: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _check_x0(x0, *, finite: bool = True) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor):
        fail("x0", x0, "a torch.Tensor of shape (B, C, T, H, W)", TypeError)
    if x0.dim() != 5:
        fail("x0", x0, "a 5-D tensor (B, C, T, H, W)")
    if not x0.is_floating_point():
        fail("x0", x0, "a floating-point tensor")
    if min(x0.shape) < 1:
        fail("x0", x0, "a non-empty tensor (every dimension >= 1)")
    if finite and bool(_nonfinite(x0)):
        _fail_nonfinite(x0)
    return x0


def _nonfinite(x0: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor, True when x0 holds a NaN or an inf (min/max propagate both; ~20× cheaper than
    isfinite().all() on CPU, and it stays on the device so it can share the one host read)."""
    low, high = torch.aminmax(x0)
    return ~(torch.isfinite(low) & torch.isfinite(high))


def _fail_nonfinite(x0: torch.Tensor) -> None:
    fail("x0", x0, "finite values only (found NaN or inf)")


def metrics_skipped(shape) -> bool:
    """True where the metrics are not computed: fewer than 2 frames (the reference's rule) or a
    single-pixel frame (whose per-frame unbiased std is undefined)."""
    return shape[2] < 2 or shape[3] * shape[4] < 2


@functools.lru_cache(maxsize=64)
def _high_mask_cpu(height: int, width: int, rule: str) -> torch.Tensor:
    if rule == "exact":
        # Pure-integer form of fy² + fx² >= 1/2 on linspace(-1, 1, n) grids (spec §6.1); size 1 = [-1].
        a, b = height - 1, width - 1
        if a == 0 or b == 0:
            # A size-1 axis is linspace(-1, 1, 1) = [-1]: fy² + fx² >= 1 > 1/2 in every bin (Q13).
            return torch.ones(height, width, dtype=torch.bool)
        i = torch.arange(height, dtype=torch.int64)[:, None]
        j = torch.arange(width, dtype=torch.int64)[None, :]
        return 2 * ((2 * i - a) ** 2 * b * b + (2 * j - b) ** 2 * a * a) >= a * a * b * b
    fy = torch.linspace(-1.0, 1.0, height, dtype=torch.float32)
    fx = torch.linspace(-1.0, 1.0, width, dtype=torch.float32)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / torch.tensor(math.sqrt(2.0), dtype=torch.float32)
    return radius >= HIGH_BAND_RADIUS


def high_frequency_mask(height: int, width: int, *, rule: str = "f32", device=None) -> torch.Tensor:
    """(H, W) bool: the fftshift-ed DFT bins counted as high band (radius ≥ 0.5). `rule="f32"` is the
    reference's float32 computation (the default; it drops 4 on-circle bins for a few sizes), "exact"
    the integer rule 2·((2i−a)²b² + (2j−b)²a²) ≥ a²b² with a = H−1, b = W−1."""
    check_choice("rule", rule, ("f32", "exact"))
    if isinstance(height, bool) or not isinstance(height, int) or height < 1:
        fail("height", height, "a positive integer")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        fail("width", width, "a positive integer")
    return _cached_mask(height, width, rule, device).clone()  # callers may modify it; the cache must not change


def _cached_mask(height: int, width: int, rule: str = "f32", device=None) -> torch.Tensor:
    if device is None or torch.device(device).type == "cpu":
        return _high_mask_cpu(height, width, rule)
    return _high_mask_on(height, width, rule, torch.device(device))


@functools.lru_cache(maxsize=64)
def _high_mask_on(height: int, width: int, rule: str, device: torch.device) -> torch.Tensor:
    # Cached per device: a host-to-device copy per call would be a needless transfer in the engine.
    return _high_mask_cpu(height, width, rule).to(device)


def _standardize(x: torch.Tensor, dims: Tuple[int, ...]) -> torch.Tensor:
    """(x − mean) / max(std, 1e-6) over `dims`, unbiased std, f32. Two-pass (mean, then the centred
    sum of squares): as accurate as torch.std and several times faster on CPU."""
    mean = x.mean(dim=dims, keepdim=True)
    centred = x - mean
    count = 1
    for d in dims:
        count *= x.shape[d]
    var = (centred * centred).sum(dim=dims, keepdim=True) / (count - 1)
    return centred / var.sqrt().clamp_min(STD_FLOOR)


def _spatial_power_sums(x0: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """High-band power and total power summed over the whole of x0 (all samples), f32 scalars.

    The input is real, so its spectrum is Hermitian (|X[-k]| = |X[k]|): a one-sided rfft2 gives every
    bin's power at ~1/5 of the cost of a full fft2 on CPU; the power is summed over (B, C, T) first and
    the other half of the (H, W) map filled by the symmetry before the fftshift and the mask."""
    x = x0.to(torch.float32)
    z = _standardize(x, (2, 3, 4))
    height, width = x.shape[3], x.shape[4]
    half = torch.view_as_real(torch.fft.rfft2(z, norm="ortho"))                        # (B, C, T, H, W//2+1, 2)
    half_power = half.pow(2).sum(dim=(0, 1, 2)).sum(dim=-1)                             # (H, W//2 + 1)
    columns = width // 2 + 1
    if width > columns:
        rows = (-torch.arange(height, device=x.device)) % height
        cols = width - torch.arange(columns, width, device=x.device)
        power = torch.cat([half_power, half_power.index_select(0, rows).index_select(1, cols)], dim=1)
    else:
        power = half_power
    power = torch.fft.fftshift(power, dim=(-2, -1))
    mask = _cached_mask(height, width, "f32", x.device)
    return (power * mask).sum(), power.sum()


def _per_sample(fn, x0: torch.Tensor, plan_scope: str) -> torch.Tensor:
    """fn on the whole batch ("batch", shape (1,)) or on each sample alone ("sample", shape (B,)): a
    sample's demands — and so its plan — must not depend on what it is batched with, and batched
    reductions round differently from single-sample ones."""
    if plan_scope == "batch":
        return fn(x0).reshape(1)
    return torch.stack([fn(x0[b:b + 1]) for b in range(x0.shape[0])])


def spatial_demand(x0: torch.Tensor, plan_scope: str = "sample", *, _checked: bool = False) -> torch.Tensor:
    """S as an f32 tensor on x0's device: (B,) per sample ("sample") or (1,) pooled ("batch").
    x0: (B, C, T, H, W) floating point, finite (checked: one host read). Skipped inputs (see
    `metrics_skipped`) give zeros."""
    _check_x0(x0, finite=not _checked)
    check_choice("plan_scope", plan_scope, PLAN_SCOPES)
    n = x0.shape[0] if plan_scope == "sample" else 1
    if metrics_skipped(x0.shape):
        return torch.zeros(n, dtype=torch.float32, device=x0.device)
    def share(x: torch.Tensor) -> torch.Tensor:
        high, total = _spatial_power_sums(x)
        return high / total.clamp_min(POWER_FLOOR)
    return _per_sample(share, x0, plan_scope)


_SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]


@functools.lru_cache(maxsize=16)
def _sobel_kernels(device: torch.device) -> torch.Tensor:
    """(2, 1, 3, 3) f32 [Sobel x / 8, Sobel y / 8] (cross-correlation weights; y is the transpose of x),
    cached per device."""
    kx = torch.tensor(_SOBEL_X, dtype=torch.float32) / 8.0
    return torch.stack([kx, kx.t()]).unsqueeze(1).to(device)


def lucas_kanade_pairs(x0: torch.Tensor) -> dict:
    """Global Lucas–Kanade flow of every consecutive frame pair, f32, batch-major: dict of (B, T−1)
    tensors u (along +x, columns), v (along +y, rows) and the sums a11, a22, a12, b1, b2.
    x0: (B, C, T, H, W) with T >= 2."""
    _check_x0(x0)
    if metrics_skipped(x0.shape):
        fail("x0", x0, "at least 2 frames of at least 2 pixels")
    return _lucas_kanade_pairs(x0)


def _lucas_kanade_pairs(x0: torch.Tensor) -> dict:
    B, _, T, H, W = x0.shape
    frames = _standardize(x0.to(torch.float32).mean(dim=1), (2, 3))
    image = frames[:, :-1].reshape(-1, 1, H, W)
    image_t = (frames[:, 1:] - frames[:, :-1]).reshape(-1, 1, H, W)
    grads = F.conv2d(image, _sobel_kernels(x0.device), padding=1)
    gx, gy = grads[:, 0], grads[:, 1]
    it = image_t[:, 0]
    a11 = (gx * gx).sum(dim=(-2, -1))
    a22 = (gy * gy).sum(dim=(-2, -1))
    a12 = (gx * gy).sum(dim=(-2, -1))
    b1 = -(gx * it).sum(dim=(-2, -1))
    b2 = -(gy * it).sum(dim=(-2, -1))
    det = (a11 * a22 - a12 * a12).clamp_min(LK_DET_FLOOR)
    u = (b1 * a22 - b2 * a12) / det
    v = (b2 * a11 - b1 * a12) / det
    shape = (B, T - 1)
    return {k: t.reshape(shape) for k, t in dict(u=u, v=v, a11=a11, a22=a22, a12=a12, b1=b1, b2=b2).items()}


def temporal_flow(x0: torch.Tensor, plan_scope: str = "sample", *, _checked: bool = False) -> torch.Tensor:
    """f (raw global-flow magnitude, latent pixels per latent frame) as an f32 tensor on x0's device:
    (B,) per sample ("sample") or (1,) pooled over all samples' pairs ("batch"). x0 as in spatial_demand."""
    _check_x0(x0, finite=not _checked)
    check_choice("plan_scope", plan_scope, PLAN_SCOPES)
    n = x0.shape[0] if plan_scope == "sample" else 1
    if metrics_skipped(x0.shape):
        return torch.zeros(n, dtype=torch.float32, device=x0.device)
    def mean_magnitude(x: torch.Tensor) -> torch.Tensor:
        pairs = _lucas_kanade_pairs(x)
        return torch.sqrt(pairs["u"] ** 2 + pairs["v"] ** 2).mean()
    return _per_sample(mean_magnitude, x0, plan_scope)


def compute_demands(x0: torch.Tensor, plan_scope: str = "sample") -> List[Demands]:
    """(B,) Demands, one per sample of x0: (B, C, T, H, W). With plan_scope="batch" every entry is the
    same pooled Demands (the reference's single plan per batch). One device-to-host read, which also
    carries the finiteness check of x0."""
    _check_x0(x0, finite=False)
    check_choice("plan_scope", plan_scope, PLAN_SCOPES)
    batch = x0.shape[0]
    used = not metrics_skipped(x0.shape)
    spatial = spatial_demand(x0, plan_scope, _checked=True)
    flow = temporal_flow(x0, plan_scope, _checked=True)
    flag = _nonfinite(x0).to(torch.float32).expand(spatial.shape[0])
    values = torch.stack([spatial, flow, flag]).cpu().tolist()
    if values[2][0]:
        _fail_nonfinite(x0)
    out = []
    for s_value, f_value in zip(values[0], values[1]):
        s_value, f_value = float(s_value), float(f_value)
        m_value = f_value / (1.0 + f_value)
        m_s, m_t = demand_split(s_value, m_value)
        out.append(Demands(S=s_value, f=f_value, M=m_value, m_s=m_s, m_t=m_t, used=used))
    if plan_scope == "batch":
        out = out * batch
    return out
