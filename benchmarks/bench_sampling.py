"""CPU timings of the sampling references (dvg_engine.sampling) at real DVG transition shapes.

These torch references are the CPU fallback of the fused resample + re-noise op and the baseline the
kernels are compared with. For each of the three transitions of a plan it reports the best time of
the resize, the 0→1 smoothing, the coordinate noise, the re-noise and the whole `resample_and_renoise`,
plus the effective bandwidth of the whole (bytes of x̂0 read + output written, float32) — the figure
the fused op's GB/s is compared against.

It also times the host-side sigma schedule of one generation (`StageSchedule`: the stage-0 schedule, the
per-step model timesteps and the three re-shifting transitions of a 50-step run), which the engine pays
once per call.

`run(device, quick)` (what `dvg bench` calls; CPU only): quick = the HunyuanVideo 720p plan's three
transitions, best of 2 without a warm-up (~20 s of CPU), plus the schedule; full = the 720p and
HunyuanVideo-1.5 480p plans, best of 3 after a warm-up.

Usage:
    python benchmarks/bench_sampling.py            # HunyuanVideo 720p 121f and HunyuanVideo-1.5 480p 121f plans
    python benchmarks/bench_sampling.py --quick    # one small plan
    python benchmarks/bench_sampling.py --threads 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from _timing import wall_times  # noqa: E402
from dvg_engine import sampling


def nested_axis(axis: List[int], size: int) -> List[int]:
    """dvg-spec §8 subset (the planner's own function is not imported so this file only needs sampling)."""
    if size == len(axis):
        return list(axis)
    if size == 1:
        return [axis[0]]
    last = len(axis) - 1
    pos = [round(i * last / (size - 1)) for i in range(size)]
    pos[0], pos[-1] = 0, last
    for i in range(1, size):
        pos[i] = min(max(pos[i], pos[i - 1] + 1), last - (size - 1 - i))
    return [axis[p] for p in pos]


def stage_axes(stage_shapes):
    full = stage_shapes[-1]
    axes = [[list(range(n)) for n in full]]
    for shape in reversed(stage_shapes[:-1]):
        axes.insert(0, [nested_axis(a, n) for a, n in zip(axes[0], shape)])
    return axes


PLANS = {
    # dvg-spec §7.4 worked example (S=0.5, M=0.05), latent shapes
    "hv_720p_121f": dict(channels=16, shapes=[(12, 44, 80), (15, 80, 144), (15, 90, 160), (31, 90, 160)]),
    "hv15_480p_121f": dict(channels=32, shapes=[(12, 15, 26), (15, 27, 48), (15, 30, 53), (31, 30, 53)]),
    "small": dict(channels=4, shapes=[(4, 8, 12), (4, 12, 18), (4, 16, 24), (9, 16, 24)]),
}


DEVICES = ("cpu",)  # the torch references here are the CPU fallback; the fused op's GPU numbers are bench_resample's


def best_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Minimum wall time: on a shared CI machine the other processes only ever add time, so the
    minimum is the stable estimate (the median drifts with the load)."""
    return min(wall_times(fn, repeats, warmup)) * 1e3


def bench_plan(name: str, repeats: int, warmup: int = 1) -> List[Dict]:
    plan = PLANS[name]
    channels, shapes = plan["channels"], plan["shapes"]
    axes = stage_axes(shapes)
    rows = []
    for k in range(3):
        src, dst = axes[k], axes[k + 1]
        anchors = sampling.stage_anchors(src, dst)
        target = shapes[k + 1]
        x0 = torch.randn(1, channels, *shapes[k])
        up = sampling.resize_to_stage(x0, target, *anchors)
        noise = sampling.coordinate_noise(*dst, channels, sampling.REFERENCE_NOISE_SEED)
        sigma = 0.9
        row = dict(plan=name, transition=f"{k}->{k + 1}", src=list(shapes[k]), dst=list(target), channels=channels)
        row["resize_ms"] = best_ms(lambda: sampling.resize_to_stage(x0, target, *anchors), repeats, warmup)
        row["smoothing_ms"] = best_ms(lambda: sampling.smooth_first_transition(up), repeats, warmup) if k == 0 else None
        row["noise_ms"] = best_ms(lambda: sampling.coordinate_noise(*dst, channels, sampling.REFERENCE_NOISE_SEED),
                                  repeats, warmup)
        row["renoise_ms"] = best_ms(lambda: sampling.renoise(up, noise, sigma), repeats, warmup)
        row["total_ms"] = best_ms(lambda: sampling.resample_and_renoise(
            x0, target, anchors, dst, sigma, sampling.REFERENCE_NOISE_SEED, smooth=k == 0), repeats, warmup)
        moved = 4 * (x0.numel() + up.numel())
        row["total_GBps"] = moved / (row["total_ms"] * 1e-3) / 1e9
        rows.append(row)
    return rows


def _generation_schedule(model: str, steps: int, stage0_shift: float) -> sampling.StageSchedule:
    """The schedule bookkeeping of one generation, as the engine's loop does it: every step's model timestep,
    and at the transition steps the x̂0 σ lookup, the re-shift and the re-noise σ lookup."""
    schedule = sampling.StageSchedule(steps, model, stage0_shift)
    for i in range(steps):
        schedule.model_timestep(i)
        if schedule.is_transition(i):
            schedule.begin_transition(i)
    return schedule


def bench_schedule(repeats: int, steps: int = 50) -> List[Dict]:
    """Host milliseconds of the sigma schedule: one `flow_sigmas` and one generation's StageSchedule walk,
    for HunyuanVideo (shift 7) and HunyuanVideo-1.5 (shift 5, its approximate timestep lookups)."""
    rows = []
    for model, shift in (("hunyuan_video", 7.0), ("hunyuan_video_1_5", 5.0)):
        schedule = _generation_schedule(model, steps, shift)
        rows.append(dict(plan=f"schedule {model}", transition=f"{steps} steps, transitions at "
                         f"{list(schedule.transition_steps)}", stages=len(schedule.stage_schedules),
                         flow_sigmas_ms=best_ms(lambda: sampling.flow_sigmas(steps, shift, model), repeats),
                         generation_ms=best_ms(lambda: _generation_schedule(model, steps, shift), repeats)))
    return rows


def run(device: str = "cpu", quick: bool = False, *, plans=None, repeats=None) -> Dict:
    """`dvg bench` entry: the reference transition pieces at real stage shapes and the schedule (CPU).

    quick: the HunyuanVideo 720p plan, each piece best of 2 without a warm-up (its noise alone is ~1 s a call);
    full: the 720p and HunyuanVideo-1.5 480p plans, best of 3 after a warm-up. `plans` / `repeats` override
    (tests use the "small" plan)."""
    if str(device) != "cpu":
        raise RuntimeError(f"bench_sampling: device={device!r} is not supported; allowed: 'cpu' (the torch "
                           f"references are the CPU fallback; GPU numbers of the fused op are bench_resample's)")
    plans = list(plans or (["hv_720p_121f"] if quick else ["hv_720p_121f", "hv15_480p_121f"]))
    unknown = [name for name in plans if name not in PLANS]
    if unknown:
        raise ValueError(f"plans={unknown} is invalid; allowed: {', '.join(PLANS)}")
    repeats = repeats or (2 if quick else 3)
    warmup = 0 if quick else 1
    rows = [row for name in plans for row in bench_plan(name, repeats, warmup)]
    schedule = bench_schedule(max(repeats, 5))
    heaviest = max(rows, key=lambda r: r["total_ms"])
    return {
        "title": f"dvg_engine.sampling references on CPU ({torch.get_num_threads()} threads), best of {repeats}"
                 + (" without a warm-up" if warmup == 0 else " after a warm-up"),
        "compared": "each piece of the faithful transition (resize, 0→1 smoothing, coordinate noise, re-noise) "
                    "and the whole `resample_and_renoise`; GB/s = fp32 bytes of x̂0 read + output written",
        "rows": rows + schedule,
        "notes": [f"heaviest transition: {heaviest['plan']} {heaviest['transition']} ({heaviest['total_ms']:.0f} ms), "
                  f"noise {heaviest['noise_ms']:.0f} ms of it — the hash + float64 Box–Muller, which the fused op "
                  f"(bench_resample) computes in-kernel",
                  "schedule rows: host time per generation, paid once per call (not per step)"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small plan, few repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = ["small"] if args.quick else ["hv_720p_121f", "hv15_480p_121f"]
    rows = [row for name in names for row in bench_plan(name, 2 if args.quick else args.repeats)]
    print(f"dvg sampling references on CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"best of {2 if args.quick else args.repeats}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'plan':16} {'trans':5} {'dst':>14} {'resize':>8} {'smooth':>8} {'noise':>8} {'renoise':>8} "
          f"{'total':>8} {'GB/s':>6}   (ms)")
    for r in rows:
        smooth = f"{r['smoothing_ms']:8.1f}" if r["smoothing_ms"] is not None else f"{'-':>8}"
        print(f"{r['plan']:16} {r['transition']:5} {'x'.join(map(str, r['dst'])):>14} {r['resize_ms']:8.1f} {smooth} "
              f"{r['noise_ms']:8.1f} {r['renoise_ms']:8.1f} {r['total_ms']:8.1f} {r['total_GBps']:6.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
