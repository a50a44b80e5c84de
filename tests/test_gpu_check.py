"""benchmarks/gpu_check.py without a GPU: the clean exit, the argument checks, the per-call plan and estimate,
and the benchmark loop's isolation and partial JSON (with fake benchmark modules on CPU)."""
import json
import pathlib
import sys
import textwrap

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


def test_without_gpu_exits_cleanly_saying_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main([]) == 0
    assert "no CUDA GPU found" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [(["--only", "bench_nope"], "--only ['bench_nope'] is not a benchmark"),
                                          (["--tests", "test_nope.py"], "--tests ['test_nope.py'] is not a GPU test")])
def test_unknown_names_are_refused_with_the_allowed_ones(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "allowed:" in err


def test_plan_runs_the_tests_first_then_one_bench_per_call(capsys):
    assert gpu_check.main(["--plan", "--quick"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    groups = len(gpu_check.TEST_GROUPS)
    assert len(lines) == groups + len(gpu_check.BENCHES)
    # every GPU test file in exactly one tests call, each call a valid --tests selection
    listed = [name for files in gpu_check.TEST_GROUPS.values() for name in files]
    assert sorted(listed) == sorted({e.split("::")[0].split("/")[-1] for e in gpu_check.GPU_TESTS})
    for line in lines[:groups]:
        assert "--skip-bench --tests" in line and "DVG_PARITY_DIR" in line
        gpu_check.select_tests(line.split("--tests ")[1].split(" --json")[0].split())
    for line, name in zip(lines[groups:], gpu_check.BENCHES):
        assert f"--skip-tests --only {name} --quick" in line and f"{name}.json" in line
        assert int(line.rsplit("~", 1)[1].split()[0]) < gpu_check.CALL_LIMIT_S
    assert "--bench-budget-s" in lines[-1] and "bench_e2e" in lines[-1]


def test_estimate_flags_a_run_over_one_call():
    one = gpu_check.estimate_lines(False, ["bench_pack_ln"], quick=True)
    assert len(one) == 1 and "bench_pack_ln ~" in one[0]
    everything = gpu_check.estimate_lines(True, gpu_check.BENCHES, quick=False)
    assert "tests ~" in everything[0] and any("--plan" in line for line in everything)


FAKE = {
    "gc_fake_fails": "def run(device, quick):\n    raise ValueError('broken on purpose')\n",
    "gc_fake_budgeted": textwrap.dedent('''
        import json
        def run(device, quick, budget_s=None, partial_path=None):
            with open(partial_path, "w") as fh:
                json.dump({"complete": False}, fh)
            return [{"device": device, "quick": quick, "budget_s": budget_s}]
    '''),
    "gc_fake_plain": "def run(device, quick):\n    return [{'x': 1.5}]\n",
}


def test_benchmarks_are_isolated_and_partial_json_follows_each(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # run_benchmarks puts its bench dir on sys.path
    for name, source in FAKE.items():
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(gpu_check, "BENCHES", list(FAKE) + ["gc_fake_missing"])
    written = []
    real_write = gpu_check._write_json

    def spy(path, payload):
        real_write(path, payload)
        written.append(json.loads(pathlib.Path(path).read_text()))
    monkeypatch.setattr(gpu_check, "_write_json", spy)
    out = tmp_path / "gpu.json"
    sections = gpu_check.run_benchmarks(True, str(out), device="cpu", bench_dir=str(tmp_path), budget_s=123,
                                        payload={"env": {"gpu": "none"}, "tests_rc": 0})
    assert [s["bench"] for s in sections] == list(FAKE) + ["gc_fake_missing"]
    assert sections[0]["error"] == "ValueError: broken on purpose"
    assert sections[1]["rows"] == [{"device": "cpu", "quick": True, "budget_s": 123}]
    assert (tmp_path / "gpu.json.gc_fake_budgeted.partial.json").exists()
    assert sections[2]["rows"] == [{"x": 1.5}]
    assert sections[3]["error"] == "benchmark module not present"
    # rewritten after each benchmark that ran, the payload kept
    assert [len(w["sections"]) for w in written] == [1, 2, 3]
    assert all(w["env"] == {"gpu": "none"} and w["tests_rc"] == 0 and w["complete"] is False for w in written)
    text = gpu_check.markdown({"gpu": "none", "commit": "abc", "torch": "t", "cuda": None, "triton": "3",
                               "diffusers": "d", "flash_attn": None}, sections, 0)
    assert "not measured: ValueError: broken on purpose" in text and "| 1.5 |" in text
    assert "Kernel tests on CUDA: passed." in text


def test_gpu_test_list_exists_and_tests_selects_by_file():
    root = pathlib.Path(gpu_check.ROOT)
    for entry in gpu_check.GPU_TESTS:
        path, _, node = entry.partition("::")
        assert (root / path).is_file(), entry
        if node:
            assert f"def {node}(" in (root / path).read_text(), entry
    assert gpu_check.select_tests(["test_pack.py"]) == ["tests/test_pack.py"]
    compat = gpu_check.select_tests(["test_engine_compat.py"])
    assert len(compat) == 2 and all(e.startswith("tests/test_engine_compat.py::") and e.endswith("_cuda") for e in compat)


def test_main_glue_with_a_pretend_gpu(tmp_path, monkeypatch, capsys):
    """main() end to end as on a GPU host (CUDA, the environment, pytest and the copy bandwidth faked): the
    estimate is printed first, the JSON is rewritten after the tests and each bench, the budget reaches the
    benchmark that takes one, and the markdown section is appended to --results."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # run_benchmarks puts its bench dir on sys.path
    monkeypatch.delitem(sys.modules, "gc_fake_budgeted", raising=False)
    monkeypatch.setattr(gpu_check, "BENCHES", ["gc_fake_budgeted"])
    monkeypatch.setattr(gpu_check, "ROOT", str(tmp_path / "root"))  # run_benchmarks' default: ROOT/benchmarks
    (tmp_path / "root" / "benchmarks").mkdir(parents=True)
    (tmp_path / "root" / "benchmarks" / "gc_fake_budgeted.py").write_text(FAKE["gc_fake_budgeted"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    env = {"python": "3", "torch": "2", "cuda": "13", "gpu": "Pretend H100", "triton": "3.6", "diffusers": "0.42",
           "transformers": "5", "flash_attn": None, "pytest": "8", "commit": "abc1234"}
    monkeypatch.setattr(gpu_check, "environment", lambda: dict(env))
    ran = []
    monkeypatch.setattr(gpu_check, "run_tests", lambda extra, files=None: ran.append(files) or 0)
    monkeypatch.setattr(gpu_check, "copy_bandwidth", lambda: 3000.0)
    out, results = tmp_path / "gpu.json", tmp_path / "results.md"
    rc = gpu_check.main(["--quick", "--tests", "test_pack.py", "--bench-budget-s", "321", "--json", str(out),
                         "--results", str(results)])
    assert rc == 0 and ran == [["tests/test_pack.py"]]
    printed = capsys.readouterr().out
    assert printed.index("gpu-check: estimate") < printed.index("tests finished")
    saved = json.loads(out.read_text())
    assert saved["complete"] is True and saved["tests_rc"] == 0 and saved["env"]["gpu"] == "Pretend H100"
    assert saved["sections"][0]["bench"] == "device_copy"
    assert saved["sections"][1]["rows"] == [{"device": "cuda", "quick": True, "budget_s": 321.0}]
    assert (tmp_path / "gpu.json.gc_fake_budgeted.partial.json").exists()
    text = results.read_text()
    assert "## GPU check — Pretend H100" in text and "Kernel tests on CUDA: passed." in text
    assert "### gc_fake_budgeted" in text
