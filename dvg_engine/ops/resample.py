"""`torch.ops.dvg.resample_renoise` (+ `resample_renoise_packed`): a DVG stage transition in one pass.

From the clean-latent prediction x̂0 on the current stage grid to the re-noised latent of the next
stage (dvg-spec.md §9–§11, §12.3 steps 4–7):

    x0_up = resize(x̂0)          temporal anchor lerp ∘ spatial area upsample with exact anchor restore
    x0_up = 0.7·x0_up + 0.3·avg3×3(x0_up)      only at the 0→1 transition (`smoothing`)
    out   = (1 − σ)·x0_up + σ·ε   ε = the coordinate-hash Gaussian field of the target stage's
                                  full-grid coordinates, channel and per-sample seed

Schema (`torch.ops.dvg.resample_renoise`):

    x0        (B, C, ts, hs, ws)  float16 / bfloat16 / float32 / float64, any strides
    anchor_t  (ts,) int32   anchor_h (hs,) int32   anchor_w (ws,) int32
              index in the target stage of every source coordinate: strictly increasing, first 0,
              last = target size − 1; a single source coordinate is [0] (its value is repeated)
              (`dvg_engine.sampling.stage_anchors`)
    coord_t   (td,) int64   coord_h (hd,) int64    coord_w (wd,) int64
              full-grid coordinates of the target stage (its nested axes, dvg-spec §8), ≥ 0
    seeds     (B,) int64    per-sample noise seed (reference: 12345 for every sample)
    sigma     float in [0, 1]: the re-noise σ (its float32 value is used, as the reference does)
    smoothing int: 0 none, 1 the reference 3×3 blend with zero padding counted, 2 padding excluded
    out_dtype dtype of the result (None: x0's dtype)
    layout    "bcthw" → (B, C, td, hd, wd);
              "tokens" → (B, (td/pt)·(hd/ph)·(wd/pw), C·pt·ph·pw), tokens in (t, h, w) row-major order,
              inner order (c, pt, ph, pw) = the flattening of the patch-embedding Conv3d weight, so
              `tokens @ conv.weight.flatten(1).T + conv.bias` equals diffusers' HunyuanVideoPatchEmbed
    patch     (pt, ph, pw); every target dim divisible by its patch size when layout == "tokens"
    validate  check tensor contents too (anchor order, coordinates ≥ 0): a device sync on CUDA

`resample_renoise_packed` takes per-sample lists (x0s, anchors, coords, each sample with its own grid)
and returns the packed token stream (Σ_b N_b, C·pt·ph·pw); the functional wrapper also returns
`cu_seqlens` (int32, built on the host from the shapes, so no device sync).

Implementations: the torch reference (`resample_renoise_ref`, composed of the very functions of
`dvg_engine.sampling` that the faithful pipeline uses), Triton (`dvg_engine.kernels.resample_renoise`;
CUDA, or CPU under TRITON_INTERPRET=1) and C++ (`csrc/resample_renoise.cpp`, CPU, OpenMP). All three
compute in float32 (float64 for the Box–Muller step) and round each operation as the reference does,
so on CPU the Triton and C++ results are bit-identical to the reference (tested); on CUDA only
libdevice's fp64 log/cos differ (≤ 1 ulp in fp64).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from dvg_engine import sampling
from dvg_engine._checks import check_choice, check_float, check_int, fail
from dvg_engine.ops import _registry

LAYOUTS = ("bcthw", "tokens")
SMOOTHING_MODES = {"none": 0, "zeros": 1, "exclude": 2}
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_DIM = 1 << 20  # integer positions are products of two axis sizes inside the kernels

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------

def _check_index_tensor(name: str, value, dtype: torch.dtype, length: int, device: torch.device,
                        length_text: str) -> None:
    if not isinstance(value, torch.Tensor):
        fail(name, value, f"a 1-D {dtype} tensor", TypeError)
    if value.dim() != 1 or value.dtype != dtype:
        fail(name, value, f"a 1-D {dtype} tensor")
    if value.shape[0] != length:
        fail(name, value, f"{length} entries ({length_text})")
    if value.device != device:
        fail(name, value, f"a tensor on x0's device {device}")


def _check_patch(patch) -> Tuple[int, int, int]:
    if isinstance(patch, (str, bytes)) or not hasattr(patch, "__len__") or len(patch) != 3:
        fail("patch", patch, "three positive ints (pt, ph, pw)")
    return tuple(check_int(f"patch[{i}]", p, minimum=1) for i, p in enumerate(patch))  # type: ignore[return-value]


def _check_anchor_contents(name: str, anchors: Tensor, target: int) -> None:
    values = anchors.tolist()
    if len(values) == 1:  # a nested axis of size 1 is [0] whatever the next stage's size (dvg-spec §8)
        if values != [0]:
            fail(name, values, f"[0] (one source coordinate, target size {target})")
        return
    allowed = (f"strictly increasing indices into the target size {target}, first 0 and last {target - 1}")
    if values[0] != 0 or values[-1] != target - 1 or any(b <= a for a, b in zip(values, values[1:])):
        fail(name, values, allowed)


def check_resample_args(x0, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds, sigma,
                        smoothing, out_dtype, layout, patch, validate, prefix: str = "") -> None:
    """Checks every argument of `resample_renoise`; errors name the argument, the value and what is
    allowed. Shape/dtype/device checks always run (host metadata only); the content checks (anchor
    order, non-negative coordinates) run when `validate` and read the tensors (a sync on CUDA)."""
    p = prefix
    if not isinstance(x0, torch.Tensor):
        fail(f"{p}x0", x0, "a 5-D floating-point tensor (B, C, T, H, W)", TypeError)
    if x0.dim() != 5 or x0.dtype not in FLOAT_DTYPES:
        fail(f"{p}x0", x0, "a 5-D tensor (B, C, T, H, W) of dtype float16, bfloat16, float32 or float64")
    batch, channels, t_s, h_s, w_s = x0.shape
    device = x0.device
    if channels < 1:
        fail(f"{p}x0", x0, "at least one channel")
    for dim, size in zip("THW", (t_s, h_s, w_s)):
        if size < 1 or size > _MAX_DIM:
            fail(f"{p}x0", x0, f"source sizes in [1, {_MAX_DIM}] (dimension {dim} is {size})")
    _check_index_tensor(f"{p}anchor_t", anchor_t, torch.int32, t_s, device, "one per source frame")
    _check_index_tensor(f"{p}anchor_h", anchor_h, torch.int32, h_s, device, "one per source row")
    _check_index_tensor(f"{p}anchor_w", anchor_w, torch.int32, w_s, device, "one per source column")
    for name, coords, src in ((f"{p}coord_t", coord_t, t_s), (f"{p}coord_h", coord_h, h_s),
                              (f"{p}coord_w", coord_w, w_s)):
        if not isinstance(coords, torch.Tensor) or coords.dim() != 1 or coords.dtype != torch.int64:
            fail(name, coords, "a 1-D int64 tensor of the target stage's full-grid coordinates",
                 TypeError if not isinstance(coords, torch.Tensor) else ValueError)
        if not (src <= coords.shape[0] <= _MAX_DIM):
            fail(name, coords, f"between {src} (the source size) and {_MAX_DIM} entries: the target "
                               f"stage is at least as large as the source")
        if coords.device != device:
            fail(name, coords, f"a tensor on x0's device {device}")
    _check_index_tensor(f"{p}seeds", seeds, torch.int64, batch, device, "one seed per sample")
    check_float("sigma", sigma, low=0.0, high=1.0)
    check_choice("smoothing", smoothing, (0, 1, 2))
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        fail("out_dtype", out_dtype, "None or one of float16, bfloat16, float32, float64")
    check_choice("layout", layout, LAYOUTS)
    pt, ph, pw = _check_patch(patch)
    if layout == "tokens":
        for dim, size, ps in (("t", coord_t.shape[0], pt), ("h", coord_h.shape[0], ph), ("w", coord_w.shape[0], pw)):
            if size % ps:
                fail("patch", tuple(patch), f"sizes dividing the target grid {(coord_t.shape[0], coord_h.shape[0], coord_w.shape[0])} "
                                            f"(dimension {dim}: {size} is not divisible by {ps})")
    if validate:
        for name, anchors, coords in ((f"{p}anchor_t", anchor_t, coord_t), (f"{p}anchor_h", anchor_h, coord_h),
                                      (f"{p}anchor_w", anchor_w, coord_w)):
            _check_anchor_contents(name, anchors, coords.shape[0])
        for name, coords in ((f"{p}coord_t", coord_t), (f"{p}coord_h", coord_h), (f"{p}coord_w", coord_w)):
            if coords.numel() and int(coords.min()) < 0:
                fail(name, coords.tolist(), "full-grid coordinates ≥ 0")


def _output_shape(x0: Tensor, coord_t: Tensor, coord_h: Tensor, coord_w: Tensor, layout: str,
                  patch: Sequence[int]) -> Tuple[int, ...]:
    batch, channels = x0.shape[0], x0.shape[1]
    t_d, h_d, w_d = coord_t.shape[0], coord_h.shape[0], coord_w.shape[0]
    if layout == "bcthw":
        return (batch, channels, t_d, h_d, w_d)
    pt, ph, pw = patch
    return (batch, (t_d // pt) * (h_d // ph) * (w_d // pw), channels * pt * ph * pw)


def tokens_from_bcthw(x: Tensor, patch: Sequence[int]) -> Tensor:
    """(B, C, T, H, W) → (B, (T/pt)(H/ph)(W/pw), C·pt·ph·pw) in the Conv3d-weight flattening order."""
    batch, channels, frames, height, width = x.shape
    pt, ph, pw = patch
    x = x.reshape(batch, channels, frames // pt, pt, height // ph, ph, width // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(batch, (frames // pt) * (height // ph) * (width // pw), channels * pt * ph * pw)


# ---------------------------------------------------------------------------------------------------
# torch reference
# ---------------------------------------------------------------------------------------------------

def resample_renoise_ref(x0: Tensor, anchor_t: Tensor, anchor_h: Tensor, anchor_w: Tensor, coord_t: Tensor,
                         coord_h: Tensor, coord_w: Tensor, seeds: Tensor, sigma: float, smoothing: int = 0,
                         out_dtype: Optional[torch.dtype] = None, layout: str = "bcthw",
                         patch: Sequence[int] = (1, 1, 1), *, upcast: bool = True) -> Tensor:
    """The torch reference: `dvg_engine.sampling`'s resize_to_stage → smooth_first_transition →
    coordinate_noise (one field per distinct seed) → renoise, then the cast and the optional token
    permutation. Shapes as `resample_renoise`.

    upcast=True runs the faithful float32 pipeline on x0.float() (the reference's x̂0 is float32);
    upcast=False resizes and draws the noise in x0's dtype (the unchanged functions on a low-precision
    input; what the CPU benchmark times). Reads anchors, coordinates and seeds on the host."""
    out_dtype = out_dtype or x0.dtype
    work = x0.float() if upcast else x0
    target = (coord_t.shape[0], coord_h.shape[0], coord_w.shape[0])
    axes = [coord_t.tolist(), coord_h.tolist(), coord_w.tolist()]
    up = sampling.resize_to_stage(work, target, anchor_t.tolist(), anchor_h.tolist(), anchor_w.tolist(),
                                  upcast=upcast)
    if smoothing:
        up = sampling.smooth_first_transition(up, padding="zeros" if smoothing == 1 else "exclude")
    seed_list = [int(s) for s in seeds.tolist()]
    fields: Dict[int, Tensor] = {}
    for seed in seed_list:
        if seed not in fields:
            fields[seed] = sampling.coordinate_noise(*axes, x0.shape[1], seed, dtype=up.dtype, device=x0.device)
    if not seed_list:  # an empty batch
        noise = up
    elif len(fields) == 1:
        noise = fields[seed_list[0]]
    else:
        noise = torch.cat([fields[s] for s in seed_list])
    out = sampling.renoise(up, noise, sigma).to(out_dtype)
    if layout == "tokens":
        out = tokens_from_bcthw(out, patch).contiguous()
    return out


# ---------------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------------

def _torch_impl(x0, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds, sigma, smoothing,
                out_dtype, layout, patch, out=None):
    result = resample_renoise_ref(x0, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds, sigma,
                                  smoothing, out_dtype, layout, patch)
    if out is None:
        return result
    out.copy_(result)
    return out


def _load_triton():
    from dvg_engine.kernels import resample_renoise as kernel_module

    def run(x0, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds, sigma, smoothing, out_dtype,
            layout, patch, out=None):
        if out is None:
            out = torch.empty(_output_shape(x0, coord_t, coord_h, coord_w, layout, patch),
                              dtype=out_dtype or x0.dtype, device=x0.device)
        # the kernels index the 1-D tables with unit stride
        index = [v.contiguous() for v in (anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds)]
        return kernel_module.resample_renoise(x0, *index, sigma, smoothing, out, layout, patch)
    return run


def _load_cpp():
    _registry.cpp_extension()
    if not hasattr(torch.ops.dvg, "_cpp_resample_renoise"):
        raise RuntimeError("dvg::resample_renoise: the C++ extension dvg_engine._C was built without "
                           "csrc/resample_renoise.cpp; rebuild it with `python setup.py build_ext --inplace`")
    cpp_op = torch.ops.dvg._cpp_resample_renoise

    def run(x0, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds, sigma, smoothing, out_dtype,
            layout, patch, out=None):
        if out is None:
            out = torch.empty(_output_shape(x0, coord_t, coord_h, coord_w, layout, patch),
                              dtype=out_dtype or x0.dtype, device=x0.device)
        index = [v.contiguous() for v in (anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds)]
        cpp_op(x0, *index, float(sigma), int(smoothing), layout == "tokens", list(patch), out)
        return out
    return run


_STALE_CPP_WARNED = []


def _cpp_kernel_available() -> bool:
    """True when dvg_engine._C is built and contains this op's C++ kernel."""
    return _registry.cpp_available() and hasattr(torch.ops.dvg, "_cpp_resample_renoise")


def _impls() -> Dict[str, object]:
    """Backends that exist for this build. An extension built before csrc/resample_renoise.cpp existed
    has no C++ kernel: "auto" then uses the torch reference (one warning), and an explicit "cpp"
    request raises with the rebuild command."""
    impls = {"torch": _torch_impl, "triton": _registry.lazy_impl(_load_triton), "cpp": _registry.lazy_impl(_load_cpp)}
    if _registry.cpp_available() and not hasattr(torch.ops.dvg, "_cpp_resample_renoise") \
            and _registry.requested_backend() == "auto":
        del impls["cpp"]
        if not _STALE_CPP_WARNED:
            _STALE_CPP_WARNED.append(True)
            warnings.warn("dvg::resample_renoise: the C++ extension dvg_engine._C has no resample_renoise kernel "
                          "(built before csrc/resample_renoise.cpp); using the torch reference. Rebuild with "
                          "`python setup.py build_ext --inplace`.", RuntimeWarning, stacklevel=3)
    return impls


# ---------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------

@torch.library.custom_op("dvg::resample_renoise", mutates_args=())
def _resample_renoise_op(x0: Tensor, anchor_t: Tensor, anchor_h: Tensor, anchor_w: Tensor, coord_t: Tensor,
                         coord_h: Tensor, coord_w: Tensor, seeds: Tensor, sigma: float, smoothing: int = 0,
                         out_dtype: Optional[torch.dtype] = None, layout: str = "bcthw",
                         patch: Optional[List[int]] = None, validate: bool = True) -> Tensor:
    patch = list(patch) if patch is not None else [1, 1, 1]
    check_resample_args(x0, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds, sigma, smoothing,
                        out_dtype, layout, patch, validate)
    return _registry.dispatch("resample_renoise", x0.device, _impls(), x0, anchor_t, anchor_h, anchor_w, coord_t,
                              coord_h, coord_w, seeds, sigma, smoothing, out_dtype, layout, patch)


@_resample_renoise_op.register_fake
def _(x0, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds, sigma, smoothing=0, out_dtype=None,
      layout="bcthw", patch=None, validate=True):
    patch = list(patch) if patch is not None else [1, 1, 1]
    check_choice("layout", layout, LAYOUTS)
    return x0.new_empty(_output_shape(x0, coord_t, coord_h, coord_w, layout, _check_patch(patch)),
                        dtype=out_dtype or x0.dtype)


def _packed_total(x0s, coord_ts, coord_hs, coord_ws, patch) -> Tuple[int, int]:
    pt, ph, pw = patch
    total = sum((ct.shape[0] // pt) * (ch.shape[0] // ph) * (cw.shape[0] // pw)
                for ct, ch, cw in zip(coord_ts, coord_hs, coord_ws))
    return total, (x0s[0].shape[1] if x0s else 0) * pt * ph * pw


@torch.library.custom_op("dvg::resample_renoise_packed", mutates_args=())
def _resample_renoise_packed_op(x0s: List[Tensor], anchor_ts: List[Tensor], anchor_hs: List[Tensor],
                                anchor_ws: List[Tensor], coord_ts: List[Tensor], coord_hs: List[Tensor],
                                coord_ws: List[Tensor], seeds: Tensor, sigma: float, smoothing: int = 0,
                                out_dtype: Optional[torch.dtype] = None, patch: Optional[List[int]] = None,
                                validate: bool = True) -> Tensor:
    patch = list(_check_patch(patch if patch is not None else [1, 1, 1]))
    lists = {"x0s": x0s, "anchor_ts": anchor_ts, "anchor_hs": anchor_hs, "anchor_ws": anchor_ws,
             "coord_ts": coord_ts, "coord_hs": coord_hs, "coord_ws": coord_ws}
    n = len(x0s)
    if n == 0:
        fail("x0s", x0s, "a non-empty list of (1, C, T, H, W) tensors, one per sample")
    for name, values in lists.items():
        if len(values) != n:
            fail(name, f"<list of {len(values)}>", f"{n} entries, one per sample (as x0s)")
    if not isinstance(seeds, torch.Tensor) or seeds.dim() != 1 or seeds.dtype != torch.int64 or seeds.shape[0] != n:
        fail("seeds", seeds, f"a 1-D int64 tensor with {n} entries, one per sample")
    ref = x0s[0]
    for b in range(n):
        x0 = x0s[b]
        if not isinstance(x0, torch.Tensor) or x0.dim() != 5 or x0.shape[0] != 1:
            fail(f"x0s[{b}]", x0, "a (1, C, T, H, W) tensor")
        if x0.shape[1] != ref.shape[1] or x0.dtype != ref.dtype or x0.device != ref.device:
            fail(f"x0s[{b}]", x0, f"the channels ({ref.shape[1]}), dtype ({ref.dtype}) and device ({ref.device}) "
                                  f"of x0s[0]")
        check_resample_args(x0, anchor_ts[b], anchor_hs[b], anchor_ws[b], coord_ts[b], coord_hs[b], coord_ws[b],
                            seeds[b:b + 1], sigma, smoothing, out_dtype, "tokens", patch, validate, prefix=f"[{b}].")
    total, token_dim = _packed_total(x0s, coord_ts, coord_hs, coord_ws, patch)
    out = torch.empty((total, token_dim), dtype=out_dtype or ref.dtype, device=ref.device)
    impls = _impls()
    backend = _registry.choose("resample_renoise_packed", ref.device, impls)
    impl = impls[backend]
    if getattr(impl, "_dvg_lazy", False):
        impl = impl()
    _registry._count("resample_renoise_packed", backend)
    start = 0
    # one launch per sample, each writing its own contiguous slice of the stream (no concatenation copy)
    for b in range(n):
        count = ((coord_ts[b].shape[0] // patch[0]) * (coord_hs[b].shape[0] // patch[1])
                 * (coord_ws[b].shape[0] // patch[2]))
        view = out[start:start + count].view(1, count, token_dim)
        impl(x0s[b], anchor_ts[b], anchor_hs[b], anchor_ws[b], coord_ts[b], coord_hs[b], coord_ws[b],
             seeds[b:b + 1], sigma, smoothing, out_dtype, "tokens", patch, out=view)
        start += count
    return out


@_resample_renoise_packed_op.register_fake
def _(x0s, anchor_ts, anchor_hs, anchor_ws, coord_ts, coord_hs, coord_ws, seeds, sigma, smoothing=0,
      out_dtype=None, patch=None, validate=True):
    patch = _check_patch(patch if patch is not None else [1, 1, 1])
    total, token_dim = _packed_total(x0s, coord_ts, coord_hs, coord_ws, patch)
    return x0s[0].new_empty((total, token_dim), dtype=out_dtype or x0s[0].dtype)


# ---------------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------------

def _smoothing_code(smoothing: Union[int, str]) -> int:
    if isinstance(smoothing, str):
        return SMOOTHING_MODES[check_choice("smoothing", smoothing, tuple(SMOOTHING_MODES))]
    return check_choice("smoothing", smoothing, (0, 1, 2))


def resample_renoise(x0: Tensor, anchor_t: Tensor, anchor_h: Tensor, anchor_w: Tensor, coord_t: Tensor,
                     coord_h: Tensor, coord_w: Tensor, seeds: Tensor, sigma: float, *,
                     smoothing: Union[int, str] = 0, out_dtype: Optional[torch.dtype] = None,
                     layout: str = "bcthw", patch: Sequence[int] = (1, 1, 1), validate: bool = True) -> Tensor:
    """x0 (B, C, ts, hs, ws) → the next stage's re-noised latent, (B, C, td, hd, wd) or tokens
    (B, N, C·pt·ph·pw). See the module docstring for every argument; smoothing may be given as
    "none" / "zeros" / "exclude" (= 0 / 1 / 2)."""
    return torch.ops.dvg.resample_renoise(x0, anchor_t, anchor_h, anchor_w, coord_t, coord_h, coord_w, seeds,
                                          float(sigma), _smoothing_code(smoothing), out_dtype, layout,
                                          list(patch), validate)


def resample_renoise_packed(x0s: Sequence[Tensor], anchor_ts: Sequence[Tensor], anchor_hs: Sequence[Tensor],
                            anchor_ws: Sequence[Tensor], coord_ts: Sequence[Tensor], coord_hs: Sequence[Tensor],
                            coord_ws: Sequence[Tensor], seeds: Tensor, sigma: float, *,
                            smoothing: Union[int, str] = 0, out_dtype: Optional[torch.dtype] = None,
                            patch: Sequence[int] = (1, 1, 1), validate: bool = True) -> Tuple[Tensor, Tensor]:
    """Samples with different grids → one packed token stream.

    x0s[b]: (1, C, ts_b, hs_b, ws_b); per-sample anchors and coordinates as in `resample_renoise`;
    seeds: (B,) int64. Returns (tokens (Σ_b N_b, C·pt·ph·pw), cu_seqlens (B + 1,) int32) where sample b
    owns rows [cu_seqlens[b], cu_seqlens[b+1]); cu_seqlens is built from the shapes on the host."""
    tokens = torch.ops.dvg.resample_renoise_packed(list(x0s), list(anchor_ts), list(anchor_hs), list(anchor_ws),
                                                   list(coord_ts), list(coord_hs), list(coord_ws), seeds,
                                                   float(sigma), _smoothing_code(smoothing), out_dtype,
                                                   list(patch), validate)
    pt, ph, pw = patch
    offsets = [0]
    for ct, ch, cw in zip(coord_ts, coord_hs, coord_ws):
        offsets.append(offsets[-1] + (ct.shape[0] // pt) * (ch.shape[0] // ph) * (cw.shape[0] // pw))
    cu_seqlens = torch.tensor(offsets, dtype=torch.int32).to(tokens.device, non_blocking=True)
    return tokens, cu_seqlens


def transition_tensors(src_axes, dst_axes, device: Union[str, torch.device, None] = None) -> Dict[str, Tensor]:
    """The index tensors of one transition from host-side nested axes (dvg-spec §8).

    src_axes, dst_axes: (axis_t, axis_h, axis_w) of the current and the next stage (full-grid
    coordinates). Returns {"anchor_t", "anchor_h", "anchor_w"} (int32) and {"coord_t", "coord_h",
    "coord_w"} (int64) on `device`, ready for `resample_renoise(x0, **tensors, seeds=..., sigma=...)`."""
    anchors = sampling.stage_anchors(src_axes, dst_axes)
    device = torch.device(device) if device is not None else torch.device("cpu")
    out = {}
    for dim, anchor, axis in zip("thw", anchors, dst_axes):
        out[f"anchor_{dim}"] = torch.tensor(anchor, dtype=torch.int32).to(device)
        out[f"coord_{dim}"] = torch.tensor([int(v) for v in axis], dtype=torch.int64).to(device)
    return out


__all__ = ["resample_renoise", "resample_renoise_packed", "resample_renoise_ref", "transition_tensors",
           "tokens_from_bcthw", "check_resample_args"]
