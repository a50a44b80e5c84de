"""CPU timings of the sampling references (dvg_engine.sampling) at real DVG transition shapes.

These torch references are the CPU fallback of the fused resample + re-noise op and the baseline the
kernels are compared with. For each of the three transitions of a plan it reports the best time of
the resize, the 0→1 smoothing, the coordinate noise, the re-noise and the whole `resample_and_renoise`,
plus the effective bandwidth of the whole (bytes of x̂0 read + output written, float32) — the figure
the fused op's GB/s is compared against.

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


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time: on a shared CI machine the other processes only ever add time, so the
    minimum is the stable estimate (the median drifts with the load)."""
    return min(wall_times(fn, repeats)) * 1e3


def bench_plan(name: str, repeats: int) -> List[Dict]:
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
        row["resize_ms"] = best_ms(lambda: sampling.resize_to_stage(x0, target, *anchors), repeats)
        row["smoothing_ms"] = best_ms(lambda: sampling.smooth_first_transition(up), repeats) if k == 0 else None
        row["noise_ms"] = best_ms(lambda: sampling.coordinate_noise(*dst, channels, sampling.REFERENCE_NOISE_SEED),
                                    repeats)
        row["renoise_ms"] = best_ms(lambda: sampling.renoise(up, noise, sigma), repeats)
        row["total_ms"] = best_ms(lambda: sampling.resample_and_renoise(
            x0, target, anchors, dst, sigma, sampling.REFERENCE_NOISE_SEED, smooth=k == 0), repeats)
        moved = 4 * (x0.numel() + up.numel())
        row["total_GBps"] = moved / (row["total_ms"] * 1e-3) / 1e9
        rows.append(row)
    return rows


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
