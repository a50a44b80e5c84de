"""Smoke test of benchmarks/bench_e2e.py's GPU code path (meta-device build, per-stage timing, the loop
arithmetic) on a tiny config on CPU, so the GPU run cannot fail on a code error."""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_e2e_gpu_path_smoke_on_cpu():
    import bench_e2e
    tiny = dict(num_attention_heads=2, attention_head_dim=64, num_layers=1, num_single_layers=1, num_refiner_layers=1,
                text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(16, 24, 24))
    rows = bench_e2e.run_gpu("cpu", quick=True, config_override=tiny, geometry=(128, 192, 33), dtype=torch.float32)
    stages = [r for r in rows if r["what"].startswith("forward stage")]
    loop = rows[-1]
    assert len(stages) == 4 and [r["calls"] for r in stages] == [15, 11, 11, 13]
    assert stages[-1]["shape"] == [9, 16, 24]
    expected = 50 * rows[4]["s_per_step"] / sum(r["calls"] * r["s_per_step"] for r in stages)
    assert abs(loop["implied_speedup_vs_baseline"] - expected) < 1e-9
    dvg_loop = sum(r["calls"] * r["s_per_step"] for r in stages)
    assert abs(loop["ideal_speedup"] - 50 * stages[-1]["s_per_step"] / dvg_loop) < 1e-9
    assert abs(loop["speedup_over_ideal"] - expected / loop["ideal_speedup"]) < 1e-9
