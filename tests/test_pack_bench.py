"""benchmarks/bench_pack_ln.py's bookkeeping (no timing): interleaved rounds, the slow callables' rounds, the
ratio to the reference per round, the targets' verdicts, and the huge-page label of allocating rows."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def _load_bench():
    """The module from its file under a private name: neither sys.path nor sys.modules["bench_pack_ln"] changes
    (`dvg bench` imports the benchmark modules by their file names; a stale entry would shadow them)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_pack_ln.py")
    spec = importlib.util.spec_from_file_location("_bench_pack_ln_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


B = _load_bench()


def test_interleaved_rounds_run_in_turn_and_slow_ones_join_the_first_rounds():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    times = B._time_interleaved(fns, torch.device("cpu"), 3, slow={"ref": lambda: order.append("ref")}, slow_reps=2)
    assert order == ["a", "b", "ref"] + ["a", "b", "ref"] * 2 + ["a", "b"]  # warm-up round, then A B A B ...
    assert [len(times[k]) for k in ("a", "b", "ref")] == [3, 3, 2]


def test_table_rows_ratios_and_targets():
    rows = []
    table = B._Table(torch.device("cpu"), rows, "shape", torch.bfloat16)
    table.ceilings(copy_ms=10.0, clone_ms=40.0, nbytes=10**8)
    ref = [100.0, 50.0, 200.0]
    fast = table.op("pack_tokens", "cpp", "allocating", [12.0, 14.0, 13.0], 10**8, ref, (70, 1.0))
    slow = table.op("pack_tokens", "cpp", "out=", [20.0, 20.0, 20.0], 10**8, ref, (70, 1.0))
    assert fast["ms"] == 13.0 and fast["% of copy_"] == pytest.approx(76.9, abs=0.05)
    assert fast["% of clone"] == pytest.approx(307.7, abs=0.05) and "% of clone" not in slow
    assert fast["× torch ref"] == pytest.approx(100 / 13, abs=0.005)
    assert fast["× ref per round (min–max)"] == "3.57–15.38"  # 50/14 and 200/13: the ratio of each round
    assert fast["met"] == "yes" and fast["target"] == ">= 70% of copy_, >= 1.0x torch ref"
    assert slow["met"] == "NO"  # 50 % of copy_ misses the bandwidth target although it is 5x the reference
    assert [r["variant"] for r in rows[:2]] == ["copy_ (existing buffer)", "clone (fresh buffer)"]


def test_allocating_rows_name_huge_page_outputs(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(B, "cpp_huge_outputs", lambda: "auto")
    assert B._fresh_variant("allocating", cpu, B.HUGE_OUTPUT_MIN_BYTES) == "allocating (own huge pages unless recycled)"
    assert B._fresh_variant("allocating", cpu, B.HUGE_OUTPUT_MIN_BYTES - 1) == "allocating"
    assert B._fresh_variant("allocating", torch.device("meta"), B.HUGE_OUTPUT_MIN_BYTES) == "allocating"
    monkeypatch.setattr(B, "cpp_huge_outputs", lambda: "always")
    assert B._fresh_variant("allocating", cpu, 1 << 40) == "allocating (own huge pages)"
    monkeypatch.setattr(B, "cpp_huge_outputs", lambda: "off")
    assert B._fresh_variant("allocating", cpu, 1 << 40) == "allocating"


def _thp_usable() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            policy = fh.read()
    except OSError:
        return False
    return "[always]" in policy or "[madvise]" in policy


@pytest.mark.parametrize("setting,expected", [("0", "off"), ("1", "always"), (None, "auto")])
def test_huge_output_mode_from_environment(monkeypatch, setting, expected):
    if setting is None:
        monkeypatch.delenv("DVG_CPP_HUGEPAGES", raising=False)
    else:
        monkeypatch.setenv("DVG_CPP_HUGEPAGES", setting)
    linux_thp = B.sys.platform.startswith("linux") and _thp_usable()
    assert B.cpp_huge_outputs() == (expected if linux_thp else "off")
