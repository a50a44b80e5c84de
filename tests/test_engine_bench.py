"""Smoke tests of benchmarks/bench_e2e.py's GPU code path (meta-device build, per-stage timing, the loop
arithmetic, progress lines, partial results, the wall-clock budget) on a tiny config on CPU, so the GPU run
cannot fail on a code error."""
import json
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

TINY = dict(num_attention_heads=2, attention_head_dim=64, num_layers=1, num_single_layers=1, num_refiner_layers=1,
            text_embed_dim=32, pooled_projection_dim=16, rope_axes_dim=(16, 24, 24))
GEOMETRY = (128, 192, 33)


def _run(**kwargs):
    import bench_e2e
    lines = []
    rows = bench_e2e.run_gpu("cpu", quick=True, config_override=TINY, geometry=GEOMETRY, dtype=torch.float32,
                             log=lines.append, **kwargs)
    return rows, lines


def test_bench_e2e_gpu_path_smoke_on_cpu(tmp_path):
    partial = tmp_path / "e2e.json"
    rows, lines = _run(partial_path=str(partial))
    stages = [r for r in rows[:4]]
    loop = rows[-1]
    assert [r["what"] for r in stages] == [f"forward stage{k}" for k in range(4)]
    assert [r["calls"] for r in stages] == [15, 11, 11, 13]
    assert stages[-1]["shape"] == [9, 16, 24]
    assert all(r["s_per_step"] > 0 and r["first_call_s"] > 0 for r in stages + [rows[4]])
    expected = 50 * rows[4]["s_per_step"] / sum(r["calls"] * r["s_per_step"] for r in stages)
    assert abs(loop["implied_speedup_vs_baseline"] - expected) < 1e-9
    dvg_loop = sum(r["calls"] * r["s_per_step"] for r in stages)
    assert abs(loop["ideal_speedup"] - 50 * stages[-1]["s_per_step"] / dvg_loop) < 1e-9
    assert abs(loop["speedup_over_ideal"] - expected / loop["ideal_speedup"]) < 1e-9
    assert loop["skipped"] == [] and loop["wall_s"] > 0
    fused = rows[5]
    assert "RoPE fused" in fused["what"] and fused["shape"] == [9, 16, 24] and fused["s_per_step"] > 0
    assert fused["vs_rope_tables"] == pytest.approx(stages[-1]["s_per_step"] / fused["s_per_step"])
    # the cost estimate comes before any work, then one partial-rows line per measured shape
    estimate = next(i for i, line in enumerate(lines) if "estimate total" in line)
    build = next(i for i, line in enumerate(lines) if "building the transformer" in line)
    assert estimate < build
    assert all(line.startswith("bench_e2e [") and " UTC +" in line for line in lines if "partial" not in line)
    partial_lines = [line for line in lines if line.startswith("bench_e2e partial ")]
    assert len(partial_lines) == 6
    assert json.loads(partial_lines[0][len("bench_e2e partial "):])[0]["s_per_step"] > 0
    saved = json.loads(partial.read_text())
    assert saved["complete"] is True and saved["rows"] == json.loads(json.dumps(rows, default=str))


def test_bench_e2e_budget_skips_what_does_not_fit(tmp_path, monkeypatch):
    """An estimate that cannot fit skips that work with a note, keeps the rows well-formed, and the partial file
    holds the stages measured before."""
    import bench_e2e
    # a baseline attention throughput of 1 FLOP/s: its estimate is astronomically over any budget
    monkeypatch.setitem(bench_e2e._EST_THROUGHPUT, "cpu", dict(bench_e2e._EST_THROUGHPUT["cpu"], baseline=1.0))
    partial = tmp_path / "e2e.json"
    rows, lines = _run(partial_path=str(partial), budget_s=300)
    stages, baseline, loop = rows[:4], rows[4], rows[-1]
    assert all(r["s_per_step"] > 0 for r in stages)
    assert baseline["s_per_step"] is None and "skipped" in baseline["note"] and "--budget-s" in baseline["note"]
    assert loop["skipped"] == ["baseline"] and rows[5]["s_per_step"] > 0
    assert loop["implied_speedup_vs_baseline"] is None and loop["ideal_speedup"] > 0
    assert any("skipped: baseline" in line for line in lines)
    assert json.loads(partial.read_text())["rows"][3]["s_per_step"] > 0


def test_bench_e2e_zero_budget_skips_everything():
    rows, lines = _run(budget_s=0)
    assert [r["s_per_step"] for r in rows[:6]] == [None] * 6
    assert all("skipped" in r["note"] for r in rows[:6])
    names = ["stage0", "stage1", "stage2", "stage3", "baseline", "stage3_fused_rope"]
    assert rows[-1]["skipped"] == names
    assert rows[-1]["dvg_loop_s"] is None and rows[-1]["ideal_speedup"] is None
    assert lines[-1].endswith("skipped for the budget: " + ", ".join(names))


def test_bench_e2e_cli_rejects_cuda_without_gpu():
    import bench_e2e
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        bench_e2e.run_gpu("cuda", quick=True)


def test_bench_e2e_dry_run_of_the_real_quick_config_on_meta():
    """The GPU run's exact configuration (24 heads × 128, text 4096, 1 + 2 blocks scaled ×20) and 720p/129-frame
    stage shapes, on the meta device: every forward (packed, diffusers' baseline, fused RoPE) goes through the
    same processors and ops (fake implementations), so a shape or plumbing error shows up here, not on the GPU."""
    import bench_e2e
    lines = []
    rows = bench_e2e.run_gpu("meta", quick=True, log=lines.append)
    assert [r["shape"] for r in rows[:4]] == [[13, 44, 80], [19, 72, 128], [19, 90, 160], [33, 90, 160]]
    assert rows[4]["shape"] == [33, 90, 160] and rows[5]["shape"] == [33, 90, 160]
    assert all(r["s_per_step"] is not None for r in rows[:6]), rows
    loop = rows[-1]
    assert loop["skipped"] == [] and loop["layers_timed"] == "1+2 (scaled x20 to 60 blocks)"
    assert any("built: 0.98" in line for line in lines)  # 1 + 2 full-width blocks, the embedders and refiner
