"""Benchmark charts (dvg_engine.plots.plot_*) and `dvg bench --plot DIR`. The rows are shaped like the real
ones in benchmarks/RESULTS.md (bench_attention is CUDA-only, so its rows here are synthetic copies of the
H100 section)."""
import pathlib

import sys

import pytest

pytest.importorskip("matplotlib")

from dvg_engine import cli, plots

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

E2E_CPU = [{
    "device": "cpu", "threads": 2, "geometry": "368x640x33", "latent": [9, 46, 80], "steps": 12, "budget": 0.5,
    "heads": 4, "head_dim": 64, "layers": [1, 1], "text_valid/len": "64/256",
    "stage_shapes": [[4, 22, 40], [5, 26, 48], [5, 46, 80], [9, 46, 80]], "calls": [4, 3, 2, 3],
    "baseline_s": [16.76, 16.16], "dvg_s": [5.057, 4.897],
    "forward_stage_s": [0.0591, 0.0946, 0.4565, 1.2711], "measured_speedup": 3.301, "measured_speedup_median": 3.308,
    "ideal_speedup": 2.907, "measured_over_ideal": 1.135, "token_step_ratio": 0.4251, "transition_share": 0.001296}]

E2E_GPU = [
    {"what": f"forward stage{k}", "shape": shape, "calls": calls, "s_per_step": s, "first_call_s": 2 * s}
    for k, (shape, calls, s) in enumerate([([12, 44, 80], 14, 0.4), ([18, 72, 128], 11, 1.1),
                                          ([18, 90, 160], 11, 1.8), ([31, 90, 160], 14, 3.9)])] + [
    {"what": "forward full, diffusers processors", "shape": [31, 90, 160], "calls": 50, "s_per_step": 4.4},
    {"what": "forward stage3, RoPE fused into the q/k pack (fused_rope)", "shape": [31, 90, 160], "calls": 14,
     "s_per_step": 3.8, "vs_rope_tables": 1.03},
    {"what": "50-step loop", "budget": 0.5, "baseline_loop_s": 220.0, "dvg_loop_s": 102.0,
     "implied_speedup_vs_baseline": 2.16, "ideal_speedup": 1.91, "gpu": "NVIDIA H100 80GB HBM3"}]


def _pack_row(op, backend, variant, ms, gbs, copy, clone=None, ref=None, target=None, met=None):
    row = {"op": op, "backend": backend, "variant": variant, "shape": "100000 tok × 2×128", "dtype": "bfloat16",
           "ms": ms, "GB/s": gbs}
    if copy is not None:
        row["% of copy_"] = copy
    for key, value in (("% of clone", clone), ("× torch ref", ref), ("target", target), ("met", met)):
        if value is not None:
            row[key] = value
    return row


PACK_LN = [
    _pack_row("copy (ceiling)", "torch", "copy_ (existing buffer)", 4.14, 24.7, None),
    _pack_row("copy (ceiling)", "torch", "clone (fresh buffer)", 21.82, 4.7, None),
    _pack_row("pack_tokens", "torch ref", "allocating", 79.75, 1.3, 5.2, 27.4),
    _pack_row("pack_tokens", "cpp", "allocating", 22.7, 4.5, 18.2, 96.1, 3.51, ">= 70% of clone, >= 1.0x torch ref",
              "yes"),
    _pack_row("pack_tokens", "cpp", "out=", 4.934, 20.8, 83.9, None, 16.16, ">= 70% of copy_, >= 1.0x torch ref",
              "yes"),
    _pack_row("unpack_tokens", "torch ref", "allocating", 14.91, 6.9, 27.8, 146.4),
    _pack_row("unpack_tokens", "cpp", "allocating", 22.39, 4.6, 18.5, 97.4, 0.67, ">= 70% of clone", "NO"),
    _pack_row("unpack_tokens", "cpp", "out=", 4.758, 21.5, 87.0, None, 3.13, ">= 70% of copy_", "yes"),
    _pack_row("modulated_layer_norm", "cpp", "out=", 6.865, 14.3, 41.0, None, 15.84, ">= 3.0x torch ref", "yes"),
]

RESAMPLE_CPU = [
    {"device": "cpu", "transition": t, "elements": n, "bytes": 4 * n, "torch_ref_ms": ref, "copy_ms": 0.005,
     "threads": 2, "cpp_ms": ref / s, "speedup_vs_torch": s, "cpp_gbps": 1.0, "cpp_melem_s": 200.0,
     "copy_fraction": 0.01}
    for t, n, ref, s in (("0->1 [4, 12, 20]->[6, 18, 32]", 55296, 4.396, 10.39),
                         ("1->2 [6, 18, 32]->[6, 24, 40]", 92160, 4.654, 10.13),
                         ("2->3 [6, 24, 40]->[9, 24, 40]", 138240, 3.652, 6.314))]

RESAMPLE_GPU = [
    {"device": "NVIDIA H100 80GB HBM3", "transition": t, "out_dtype": dtype, "elements": 2654208, "bytes": 8011776,
     "triton_us": 418.1, "triton_tokens_us": 523.2, "torch_ref_us": 6895, "speedup_vs_torch": s}
    for t, dtype, s in (("0->1 [12, 44, 80]->[18, 72, 128]", "torch.bfloat16", 16.49),
                        ("0->1 [12, 44, 80]->[18, 72, 128]", "torch.float32", 17.91),
                        ("1->2 [18, 72, 128]->[18, 90, 160]", "torch.bfloat16", 28.09))]

_PROVIDERS = (("dvg_triton", 495.6), ("sdpa_flash_loop", 347.3), ("sdpa_cudnn_loop", 554.3),
              ("sdpa_efficient_padded", 110.2), ("flash_attn_varlen", None))
ATTENTION = [
    {"case": case, "provider": p, "total_tokens": 15260, "lens": [8480, 6780], "heads": 24, "head_dim": 128,
     "dtype": "bfloat16", "flops": 1.448e12, "ms": None if tf is None else 1.448 / tf * 1e3,
     "tflops": None if tf is None else tf * scale, "ok": tf is not None,
     **({"vs_best_sdpa": 0.894} if p == "dvg_triton" else {}),
     **({"skipped": "ModuleNotFoundError: No module named 'flash_attn'"} if tf is None else {})}
    for case, scale in (("packed-15k  (stage 0: 9x46x80 + 13x34x60, text 200/150)", 1.0),
                        ("single-119k (720p full grid 33x90x160, text 256)", 0.97))
    for p, tf in _PROVIDERS]


def _assert_png(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, (path, len(data))


@pytest.mark.parametrize("chart, rows", [
    (plots.plot_e2e, E2E_CPU), (plots.plot_e2e, E2E_GPU), (plots.plot_e2e, E2E_CPU + E2E_GPU),
    (plots.plot_pack_ln, PACK_LN), (plots.plot_resample, RESAMPLE_CPU), (plots.plot_resample, RESAMPLE_GPU),
    (plots.plot_attention, ATTENTION)], ids=["e2e_cpu", "e2e_gpu", "e2e_both", "pack_ln", "resample_cpu",
                                             "resample_gpu", "attention"])
def test_chart_writes_png(tmp_path, chart, rows):
    out = tmp_path / "sub" / "chart.png"
    assert chart(rows, out) == str(out)
    _assert_png(out)


def test_e2e_runs_reads_cpu_and_gpu_rows():
    cpu, gpu = plots._e2e_runs(E2E_CPU + E2E_GPU)
    assert cpu["shapes"] == E2E_CPU[0]["stage_shapes"] and cpu["calls"] == [4, 3, 2, 3]
    assert cpu["baseline_s"] == 16.16 and cpu["dvg_s"] == 4.897  # best-of, like the measured_speedup
    assert (cpu["measured"], cpu["ideal"]) == (3.301, 2.907)
    # GPU: the four stage rows in order; the fused-RoPE variant and the baseline forward are not stages
    assert gpu["shapes"] == [[12, 44, 80], [18, 72, 128], [18, 90, 160], [31, 90, 160]]
    assert gpu["stage_s"] == [0.4, 1.1, 1.8, 3.9] and gpu["calls"] == [14, 11, 11, 14]
    assert (gpu["measured"], gpu["ideal"], gpu["dvg_s"]) == (2.16, 1.91, 102.0)
    assert gpu["label"] == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("chart, rows, needle", [
    (plots.plot_e2e, [{"device": "cpu", "baseline_s": [1.0]}], "stage_shapes"),
    (plots.plot_e2e, [dict(E2E_CPU[0], calls=[1, 2])], "stage_shapes"),  # stage lists of different lengths
    (plots.plot_pack_ln, [{"op": "pack_tokens", "ms": 1.0}], "% of copy_"),
    (plots.plot_pack_ln, PACK_LN[:2], "% of copy_"),  # only the copy ceilings
    (plots.plot_pack_ln, [dict(r, **{"% of copy_": ""}) for r in PACK_LN], "% of copy_"),  # empty table cells
    (plots.plot_e2e, [dict(E2E_CPU[0], forward_stage_s=["n/a"] * 4, measured_speedup=None)], "stage_shapes"),
    (plots.plot_resample, [dict(RESAMPLE_CPU[0], speedup_vs_torch=None)], "speedup_vs_torch"),  # no C++ kernel
    (plots.plot_attention, [dict(r, tflops=None) for r in ATTENTION], "tflops"),
    (plots.plot_attention, [], "no rows"),
    (plots.plot_resample, {"rows": RESAMPLE_CPU}, "not a list of dicts"),
])
def test_rows_without_the_keys_give_a_note_and_no_file(tmp_path, chart, rows, needle):
    out = tmp_path / "chart.png"
    with pytest.raises(plots.NothingToPlot, match=needle) as info:
        chart(rows, out)
    assert "\n" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_plot_benchmark_picks_the_chart_and_reads_dict_results(tmp_path):
    out = plots.plot_benchmark("bench_resample", {"title": "t", "rows": RESAMPLE_CPU}, tmp_path / "r.png")
    _assert_png(out)
    with pytest.raises(plots.NothingToPlot, match="no chart for this module"):
        plots.plot_benchmark("bench_planner", [{"bench": "planner"}], tmp_path / "p.png")
    with pytest.raises(plots.NothingToPlot, match="no table rows"):
        plots.plot_benchmark("bench_e2e", "| a |\n|---|", tmp_path / "e.png")
    with pytest.raises(ValueError, match="suffix"):
        plots.plot_resample(RESAMPLE_CPU, tmp_path / "r.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png"]


def _fake_bench_dir(tmp_path):
    folder = tmp_path / "benches"
    folder.mkdir()
    (folder / "bench_resample.py").write_text(f"ROWS = {RESAMPLE_CPU!r}\ndef run(device, quick):\n    return ROWS\n")
    (folder / "bench_e2e.py").write_text("def run(device, quick):\n    return [{'device': 'cpu', 'baseline_s': 1.0}]\n")
    (folder / "bench_pack_ln.py").write_text("def run(device, quick):\n    raise RuntimeError('no C++ extension')\n")
    (folder / "bench_attention.py").write_text("DEVICES = ('cuda',)\n"
                                               "def run(device, quick):\n    raise AssertionError\n")
    (folder / "bench_planner.py").write_text("def run(quick):\n    return [{'bench': 'planner', 'median_ms': 1.0}]\n")
    return folder


def test_bench_plot_notes_and_links(tmp_path, capsys):
    results = tmp_path / "out" / "R.md"
    plot_dir = tmp_path / "charts"
    path_before = list(sys.path)
    code = cli.main(["bench", "--bench-dir", str(_fake_bench_dir(tmp_path)), "--results", str(results),
                     "--plot", str(plot_dir)])
    capsys.readouterr()
    # the benchmark folder is on sys.path only while the modules run: left there, its fake bench_e2e.py
    # shadowed benchmarks/bench_e2e.py for every later `import bench_e2e` in the test session
    assert sys.path == path_before
    assert code == 1  # bench_pack_ln failed; its table section and the others' are still written
    text = results.read_text()
    pngs = sorted(plot_dir.glob("*.png"))
    assert [p.name.split("-")[0] for p in pngs] == ["bench_resample"]
    _assert_png(pngs[0])
    assert f"![bench_resample chart](../charts/{pngs[0].name})" in text
    section = {}
    for part in text.split("\n### ")[1:]:
        section[part.split(" ", 1)[0]] = part
    assert "| 0->1 [4, 12, 20]->[6, 18, 32] |" in section["bench_resample"]
    assert "_no chart: bench_e2e: no row has stage_shapes" in section["bench_e2e"]
    assert "FAILED" in section["bench_pack_ln"] and "_no chart: the module failed_" in section["bench_pack_ln"]
    assert "_no chart: the module was skipped_" in section["bench_attention"]
    assert "no chart for this module" in section["bench_planner"]
    assert text.count("![") == 1


def test_bench_plot_failure_keeps_the_tables(tmp_path, capsys, monkeypatch):
    def broken(rows, path):
        raise RuntimeError("renderer exploded")
    monkeypatch.setitem(plots.BENCH_CHARTS, "bench_resample", broken)
    text = _fake_resample_bench_with_plot(tmp_path, capsys, tmp_path / "charts")
    assert "_chart failed: RuntimeError: renderer exploded_" in text


def _fake_resample_bench_with_plot(tmp_path, capsys, plot_dir) -> str:
    """`dvg bench --plot plot_dir` over the fake bench_resample: exits 0 with its table written; returns the
    results text."""
    results = tmp_path / "R.md"
    code = cli.main(["bench", "--bench-dir", str(_fake_bench_dir(tmp_path)), "--only", "bench_resample",
                     "--results", str(results), "--plot", str(plot_dir)])
    capsys.readouterr()
    assert code == 0
    text = results.read_text()
    assert "| 0->1 [4, 12, 20]->[6, 18, 32] |" in text
    return text


def test_bench_plot_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    results = tmp_path / "R.md"
    code = cli.main(["bench", "--bench-dir", str(_fake_bench_dir(tmp_path)), "--results", str(results),
                     "--plot", str(blocker)])
    err = capsys.readouterr().err
    assert code == 2 and not results.exists()
    assert "--plot" in err and str(blocker) in err and "folder" in err


def test_dvg_bench_quick_plot_real_modules(tmp_path, capsys):
    """The real bench_planner and bench_resample modules, in process, as `dvg bench` runs them."""
    from dvg_engine.ops import _registry
    results = tmp_path / "R.md"
    plot_dir = tmp_path / "plots"
    code = cli.main(["bench", "--quick", "--only", "bench_planner", "--only", "bench_resample", "--results",
                     str(results), "--plot", str(plot_dir)])
    capsys.readouterr()
    assert code == 0
    text = results.read_text()
    assert "### bench_planner" in text and "### bench_resample" in text
    if not _registry.cpp_available():  # without the C++ kernel the rows have no speedup: a note, no chart
        assert "_no chart: bench_resample" in text
        return
    (png,) = plot_dir.glob("bench_resample-*.png")
    _assert_png(png)
    assert f"![bench_resample chart](plots/{png.name})" in text


def test_bench_plot_unwritable_folder_keeps_the_tables(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    text = _fake_resample_bench_with_plot(tmp_path, capsys, blocker / "charts")
    assert "_chart failed: " in text and "![" not in text
