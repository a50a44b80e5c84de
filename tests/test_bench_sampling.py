"""benchmarks/bench_sampling.py's run(device, quick) — what `dvg bench` calls — on the small plan."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_sampling  # noqa: E402
from dvg_engine import sampling  # noqa: E402
from dvg_engine.bench import render_result  # noqa: E402


@pytest.fixture(scope="module")
def result():
    return bench_sampling.run("cpu", quick=True, plans=["small"], repeats=1)


def test_rows_time_each_transition_piece(result):
    rows = [r for r in result["rows"] if r["plan"] == "small"]
    assert [r["transition"] for r in rows] == ["0->1", "1->2", "2->3"]
    shapes = bench_sampling.PLANS["small"]["shapes"]
    for k, row in enumerate(rows):
        assert row["src"] == list(shapes[k]) and row["dst"] == list(shapes[k + 1])
        for key in ("resize_ms", "noise_ms", "renoise_ms", "total_ms"):
            assert row[key] > 0, (key, row)
        # smoothing is the 0→1 transition's only
        assert (row["smoothing_ms"] is not None) == (k == 0)
        elements = row["channels"] * (shapes[k][0] * shapes[k][1] * shapes[k][2]
                                      + shapes[k + 1][0] * shapes[k + 1][1] * shapes[k + 1][2])
        assert row["total_GBps"] == pytest.approx(4 * elements / (row["total_ms"] * 1e-3) / 1e9)


def test_schedule_rows_walk_a_whole_generation(result):
    rows = {r["plan"]: r for r in result["rows"] if r["plan"].startswith("schedule")}
    assert set(rows) == {"schedule hunyuan_video", "schedule hunyuan_video_1_5"}
    steps = list(sampling.default_transition_steps(50))
    for row in rows.values():
        assert row["stages"] == 4 and str(steps) in row["transition"]
        assert row["flow_sigmas_ms"] > 0 and row["generation_ms"] > 0


def test_dvg_bench_can_render_and_run_it(result):
    assert bench_sampling.DEVICES == ("cpu",)
    text = render_result(result)
    assert "| small | 0->1 |" in text and "heaviest transition" in text


@pytest.mark.parametrize("kwargs, error, needle", [
    (dict(device="cuda"), RuntimeError, "allowed: 'cpu'"),
    (dict(device="cpu", plans=["hv_8k"]), ValueError, "allowed: hv_720p_121f"),
])
def test_bad_arguments_are_refused(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        bench_sampling.run(**kwargs)
