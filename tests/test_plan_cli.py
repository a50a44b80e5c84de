"""`dvg plan` (dvg_engine.plan_cli): --cases over every planner.json input, the table, --json, --x0,
--plot, the options, usage errors (exit 2, one line) and the 1,000-case speed requirement."""
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dvg_engine import plan_cli
from dvg_engine import planner as P

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = ["--model", "hunyuan-video", "--height", "720", "--width", "1280", "--frames", "121", "--steps", "50",
        "--budget", "0.5"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(*argv, timeout=120):
    """Run `python -m dvg_engine.plan_cli` in a subprocess: (returncode, stdout, stderr, cpu_seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "dvg_engine.plan_cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, proc.stdout, proc.stderr, cpu


def _main(capsys, *argv):
    """In-process run: (exit code, stdout, stderr)."""
    try:
        code = plan_cli.main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cases_parity_over_every_planner_input(parity_path, tmp_path):
    cases = json.loads((parity_path / "planner.json").read_text())
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c["inputs"]) + "\n" for c in cases))
    code, out, err, _ = _cli("--cases", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(cases)
    checked = 0
    for case, line in zip(cases, lines):
        got = json.loads(line)
        expected = case["outputs"]
        assert ("error" in got) == ("error" in expected), case["inputs"]
        for key, value in expected.items():
            assert got[key] == value, (case["inputs"], key)
        checked += 1
    assert checked == len(cases)


def test_cases_speed_1000_lines(parity_path, tmp_path):
    """1,000 distinct-ish cases (the parity inputs repeated with shifted budgets) in under 10 s of CPU."""
    cases = json.loads((parity_path / "planner.json").read_text())
    lines = []
    for i in range(1000):
        inputs = dict(cases[i % len(cases)]["inputs"])
        inputs["budget"] = round(inputs["budget"] + 0.001 * (i // len(cases)), 6)
        lines.append(json.dumps(inputs) + "\n")
    path = tmp_path / "many.jsonl"
    path.write_text("".join(lines))
    start = time.perf_counter()
    code, out, err, cpu = _cli("--cases", str(path))
    wall = time.perf_counter() - start
    assert code == 0, err
    assert len(out.splitlines()) == 1000
    # CPU time, not wall: the test machine is shared with other jobs. On an idle 2-core box they match.
    assert cpu < 10.0, f"1,000 cases took {cpu:.2f} s CPU ({wall:.2f} s wall)"


def test_cases_bad_lines_keep_alignment_and_exit_2(tmp_path):
    good = dict(model="hunyuan-video-1.5", height_px=480, width_px=848, num_frames=121, num_steps=50, budget=0.5,
                spatial_demand=0.3, temporal_demand=0.3)
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(good) + "\n" + "{not json\n\n" + json.dumps(dict(good, budget=2.0)) + "\n"
                    + json.dumps({"inputs": dict(good, budget=0.3), "outputs": {}}) + "\n")
    code, out, err, _ = _cli("--cases", str(path))
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4
    assert "chosen" in rows[0]
    assert rows[1]["error_where"] == "input" and "line 2" in rows[1]["error"]
    assert rows[2]["error_where"] == "input" and "budget=2.0" in rows[2]["error"]
    assert rows[3]["error"].startswith("No stage-transition action")      # a case object's inputs are used
    assert code == 2 and len(err.strip().splitlines()) == 1 and "2 invalid input line(s)" in err


def test_table_output(capsys):
    code, out, err = _main(capsys, *BASE, "--spatial-demand", "0.3", "--temporal-demand", "0.3")
    assert code == 0, err
    plan = P.plan_stages(P.full_grid("hunyuan_video", 720, 1280, 121), 50, 0.5, 0.3, 0.3)
    for k in range(4):
        t, h, w = plan.stage_shapes[k]
        tt, th, tw = plan.token_shapes[k]
        assert f"{t}x{h}x{w}" in out and f"{tt}x{th}x{tw}" in out and f"{tt * th * tw:,}" in out
    assert f"density {plan.density:.6f}" in out
    assert "feasible budgets: " + P.format_intervals(P.feasible_budget_intervals(plan.grid, 50)) in out
    assert "chosen s2=0.8 t23=18" in out


def test_json_output_and_options(capsys):
    code, out, err = _main(capsys, *BASE, "--spatial-demand", "0.5", "--temporal-demand", "0.05", "--json",
                           "--budget-accounting", "executed")
    assert code == 0, err
    data = json.loads(out)
    grid = P.full_grid("hunyuan_video", 720, 1280, 121)
    plan = P.plan_stages(grid, 50, 0.5, 0.5, 0.05, budget_accounting="executed")
    assert P.Plan.from_dict(data) == plan
    assert data["feasible_budgets"] == [list(iv) for iv in P.feasible_budget_intervals(grid, 50, "executed")]


def test_budget_fallback_option(capsys):
    code, out, err = _main(capsys, *BASE, "--budget", "0.3", "--budget-fallback", "nearest", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["budget"] == 0.3 and data["budget_used"] != 0.3 and "nearest feasible" in data["fallback"]
    code, out, err = _main(capsys, *BASE, "--budget", "0.3")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "No stage-transition action" in err and "feasible budgets: [" in err


def test_no_demands_means_neutral_split(capsys):
    code, out, err = _main(capsys, *BASE, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["demand_split"] == {"m_s": 0.5, "m_t": 0.5}
    assert P.Plan.from_dict(data) == P.plan_stages(P.full_grid("hunyuan_video", 720, 1280, 121), 50, 0.5, 0, 0)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_x0_file_computes_demands(capsys, tmp_path, suffix):
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 32, 12, 15, 26, generator=g)   # HV-1.5 480p 121f stage 0 at budget 0.5
    x0[1] = x0[1].mean()  + 0.1 * torch.arange(26.0)   # a smooth, static second sample
    path = tmp_path / f"x0{suffix}"
    if suffix == ".npy":
        np.save(path, x0.numpy())
    else:
        torch.save(x0, path)
    argv = ["--model", "hunyuan-video-1.5", "--height", "480", "--width", "848", "--frames", "121", "--x0",
            str(path), "--json"]
    code, out, err = _main(capsys, *argv)
    assert code == 0, err
    data = json.loads(out)
    grid = P.full_grid("hunyuan_video_1_5", 480, 848, 121)
    expected = P.plan_from_x0(grid, 50, 0.5, x0)
    assert [P.Plan.from_dict(p) for p in data["plans"]] == expected
    assert data["plans"][0]["demands"]["S"] > 0.5 > data["plans"][1]["demands"]["S"]
    code, out, err = _main(capsys, *argv, "--plan-scope", "batch")
    assert code == 0, err
    pooled = json.loads(out)["plans"]
    assert pooled[0] == pooled[1]
    code, out, err = _main(capsys, *argv[:-1])
    assert code == 0 and "sample 0:" in out and "sample 1:" in out and "demands from x0: S=" in out


def test_plot_writes_png(capsys, tmp_path):
    path = tmp_path / "tokens.png"
    code, out, err = _main(capsys, *BASE, "--spatial-demand", "0.3", "--temporal-demand", "0.3", "--plot", str(path))
    assert code == 0, err
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize("argv,fragment", [
    (["--model", "wan"], "--model: invalid choice"),
    (["--height", "abc"], "--height: invalid int value"),
    (["--spatial-demand", "0.3"], "--temporal-demand is required"),
    (["--spatial-demand", "0.3", "--temporal-demand", "1.5"], "temporal_demand=1.5 is invalid"),
    (["--budget", "0"], "budget=0.0 is invalid"),
    (["--frames", "30"], "num_frames=30 is invalid"),
    (["--x0", "/nonexistent.npy"], "--x0='/nonexistent.npy' is not a file"),
    (["--x0", "x.npy", "--spatial-demand", "0.1", "--temporal-demand", "0.1"], "cannot be combined"),
    (["--cases", "c.jsonl", "--plot", "p.png"], "--cases cannot be combined with --plot"),
    (["--cases", "/nonexistent.jsonl"], "cannot be read"),
    (["--budget-accounting", "exact"], "--budget-accounting: invalid choice"),
])
def test_usage_errors_exit_2_with_one_line(capsys, argv, fragment):
    code, out, err = _main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("dvg plan: error: ") and fragment in err, err


def test_x0_shape_and_type_errors(capsys, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 16, 12, 45, 80), dtype=np.float32))
    code, out, err = _main(capsys, *BASE, "--x0", str(wrong))
    assert code == 2 and "shape (B, 16, 12, 44, 80)" in err and err.count("\n") == 1
    other = tmp_path / "x.txt"
    other.write_text("1")
    code, out, err = _main(capsys, *BASE, "--x0", str(other))
    assert code == 2 and "unknown extension" in err
    notensor = tmp_path / "d.pt"
    torch.save({"a": 1}, notensor)
    code, out, err = _main(capsys, *BASE, "--x0", str(notensor))
    assert code == 2 and "holds a dict" in err


def test_subprocess_usage_error_is_one_line():
    code, out, err, _ = _cli("--model", "hunyuan")
    assert code == 2 and out == "" and err.count("\n") == 1 and "invalid choice" in err
