"""`dvg bench`: run the benchmark modules and append their results to benchmarks/RESULTS.md.

Each `benchmarks/bench_*.py` that defines `run(device, quick)` is imported from its file and called
with `device` ("cpu" or "cuda") and `quick` (bool). What `run` returns is rendered as markdown:

* a `str`: included verbatim (already markdown);
* a `dict` with any of: "title" (str), "compared" (str: what was measured against what),
  "rows" (list of dicts: a table, columns in first-seen key order), "ratios" (dict name -> number),
  "notes" (str or list of str);
* a `list` of dicts: a table;
* `None`: recorded as "no results returned".

A module without `run` is listed as skipped, and so is one whose module-level `DEVICES` (e.g.
`("cuda",)`) excludes the device, or whose `run` raises `BenchmarkSkipped("why")` (any exception class
of that name, so a benchmark needs no import from this package). One that raises anything else is
recorded as FAILED with the one-line cause, the others still run, and the exit code is 1. The appended section starts with the machine,
date (UTC), commit and device, so every number in RESULTS.md says where it came from.

With `plot_dir` (`dvg bench --plot DIR`) each module's rows are also drawn (dvg_engine.plots.BENCH_CHARTS:
bench_e2e, bench_pack_ln, bench_resample, bench_attention) to DIR/<module>-<device>-<date>.png, linked
from the module's part of the section (relative to the results file); a module that was skipped, failed,
has no chart or lacks the chart's keys gets a one-line "no chart" note instead. Charts are drawn after
every module ran and each failure is caught, so plotting never loses the tables.
"""
from __future__ import annotations

import datetime
import importlib.util
import os
import pathlib
import platform
import subprocess
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

class BenchmarkSkipped(Exception):
    """Raised by a benchmark's run() that cannot run here (e.g. it needs CUDA): recorded as skipped."""


__all__ = ["BenchmarkSkipped", "main", "discover", "machine_info", "git_commit", "render_result", "format_section",
           "run_benchmarks", "draw_charts"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_BENCH_DIR = REPO_ROOT / "benchmarks"
DEFAULT_RESULTS = DEFAULT_BENCH_DIR / "RESULTS.md"


def discover(bench_dir: pathlib.Path, only: Optional[Sequence[str]] = None) -> List[pathlib.Path]:
    """The bench_*.py files of bench_dir, sorted; `only` keeps the named ones ("bench_x" or "bench_x.py")
    and raises ValueError naming any that do not exist."""
    files = sorted(p for p in pathlib.Path(bench_dir).glob("bench_*.py") if p.is_file())
    if only:
        wanted = [name[:-3] if name.endswith(".py") else name for name in only]
        names = {p.stem for p in files}
        missing = [name for name in wanted if name not in names]
        if missing:
            raise ValueError(f"only={missing} not found in {bench_dir}; allowed: {', '.join(sorted(names)) or 'none'}")
        files = [p for p in files if p.stem in wanted]
    return files


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> Optional[float]:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return None


def machine_info(device: str) -> Dict[str, Any]:
    """Host, CPU, cores, memory, library versions and (for CUDA) the card name."""
    import torch
    info: Dict[str, Any] = {
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for name in ("triton", "diffusers"):
        try:
            info[name] = __import__(name).__version__
        except Exception:
            info[name] = "missing"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def git_commit(cwd: pathlib.Path = REPO_ROOT) -> str:
    """Short commit hash, with "+dirty" when tracked files have uncommitted changes; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[Dict[str, Any]]) -> str:
    columns: List[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def render_result(result: Any) -> str:
    """Markdown for what a module's run() returned (see the module docstring for the accepted forms)."""
    if result is None:
        return "_no results returned_"
    if isinstance(result, str):
        return result.strip()
    if isinstance(result, list):
        if not all(isinstance(r, dict) for r in result):
            raise TypeError("run() returned a list with non-dict entries; allowed: a list of dicts (table rows)")
        return _table(result) if result else "_no rows_"
    if not isinstance(result, dict):
        raise TypeError(f"run() returned {type(result).__name__}; allowed: str, dict, list of dicts or None")
    parts = []
    if result.get("title"):
        parts.append(f"**{result['title']}**")
    if result.get("compared"):
        parts.append(f"compared: {result['compared']}")
    if result.get("rows"):
        parts.append(_table(result["rows"]))
    if result.get("ratios"):
        parts.append("ratios: " + ", ".join(f"{k} = {_cell(v)}" for k, v in result["ratios"].items()))
    notes = result.get("notes")
    if notes:
        parts.extend(f"- {n}" for n in ([notes] if isinstance(notes, str) else notes))
    known = {"title", "compared", "rows", "ratios", "notes"}
    extra = {k: v for k, v in result.items() if k not in known}
    if extra:
        parts.append(_table([extra]))
    return "\n\n".join(parts) if parts else "_empty result_"


def _import_file(path: pathlib.Path):
    # A private module name per file: two checkouts' benchmarks never collide in sys.modules.
    name = f"_dvg_bench_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _call_run(runner, device: str, quick: bool):
    """run(device, quick); a run() that takes only some of the two (e.g. a CPU-only `run(quick)`) gets
    those, by name."""
    import inspect
    try:
        params = inspect.signature(runner).parameters
    except (TypeError, ValueError):
        return runner(device, quick)
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) or {"device", "quick"} <= set(params):
        return runner(device=device, quick=quick)
    return runner(**{k: v for k, v in (("device", device), ("quick", quick)) if k in params})


def _failed(path: pathlib.Path, exc: BaseException, start: float, echo) -> Tuple[str, str, float, str]:
    cause = " ".join(f"{type(exc).__name__}: {exc}".split())
    if echo:
        echo(traceback.format_exc().rstrip())
    return (path.stem, "FAILED", time.perf_counter() - start, f"**FAILED**: {cause}")


def run_benchmarks(files: Sequence[pathlib.Path], device: str, quick: bool,
                   echo=None, raw: Optional[Dict[str, Any]] = None) -> List[Tuple[str, str, float, str]]:
    """Run each file's run(device, quick). Returns [(name, status, seconds, markdown)] with status
    "ok", "skipped" or "FAILED"; `raw`, when given, receives {name: what run() returned} for the "ok" ones."""
    outcomes = []
    for path in files:
        if echo:
            echo(f"dvg bench: {path.stem} ...")
        start = time.perf_counter()
        try:
            module = _import_file(path)
            runner = getattr(module, "run", None)
            devices = getattr(module, "DEVICES", None)
            if runner is None:
                outcomes.append((path.stem, "skipped", 0.0, "_skipped: the module has no run(device, quick)_"))
                continue
            if devices is not None and device not in devices:
                outcomes.append((path.stem, "skipped", 0.0, f"_skipped: runs on {', '.join(devices)} only_"))
                continue
            result = _call_run(runner, device, quick)
            text = render_result(result)
            if raw is not None:
                raw[path.stem] = result
            outcomes.append((path.stem, "ok", time.perf_counter() - start, text))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if type(exc).__name__ != "BenchmarkSkipped":
                outcomes.append(_failed(path, exc, start, echo))
            else:
                outcomes.append((path.stem, "skipped", time.perf_counter() - start,
                                 f"_skipped: {' '.join(str(exc).split())}_"))
        except BaseException as exc:  # one module's failure (even SystemExit) must not lose the others' numbers
            outcomes.append(_failed(path, exc, start, echo))
        if echo:
            echo(f"dvg bench: {path.stem}: {outcomes[-1][1]} ({outcomes[-1][2]:.1f} s)")
    return outcomes


def format_section(outcomes, info: Dict[str, Any], *, device: str, quick: bool, commit: str,
                   date: Optional[datetime.datetime] = None, bench_dir: Optional[pathlib.Path] = None,
                   charts: Optional[Dict[str, str]] = None) -> str:
    """The markdown section for `outcomes`; `charts` maps a module name to the markdown line (image link or
    "no chart" note) that follows its table."""
    date = date or datetime.datetime.now(datetime.timezone.utc)
    machine = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores"
    lines = [f"## dvg bench {'--quick ' if quick else ''}— {date.strftime('%Y-%m-%d %H:%M UTC')} — {machine}", ""]
    mem = info.get("memory_gib")
    lines.append(f"- machine: {info['host']}; {info['os']}; CPU {info['cpu']} ({info['cores']} cores, torch threads "
                 f"{info['torch_threads']}){'' if mem is None else f'; {mem:.0f} GiB RAM'}"
                 + (f"; GPU {info['gpu']} (CUDA {info.get('cuda')})" if info.get("gpu") else ""))
    lines.append(f"- software: Python {info['python']}, torch {info['torch']}, triton {info['triton']}, "
                 f"diffusers {info['diffusers']}")
    lines.append(f"- commit: {commit}; device: {device}; mode: {'quick' if quick else 'full'}")
    summary = ", ".join(f"{name} {status}" for name, status, _, _ in outcomes) or "no bench_*.py modules found"
    lines.append(f"- modules: {summary}")
    for name, status, seconds, text in outcomes:
        where = f"benchmarks/{name}.py" if bench_dir is None else str(pathlib.Path(bench_dir) / f"{name}.py")
        lines += ["", f"### {name} ({where}) — {status}, {seconds:.1f} s", "", text]
        if charts and name in charts:
            lines += ["", charts[name]]
    return "\n".join(lines) + "\n"


def append_section(results: pathlib.Path, section: str) -> None:
    results = pathlib.Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    if results.exists():
        existing = results.read_text()
        separator = "" if existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
        results.write_text(existing + separator + section)
    else:
        results.write_text("# Benchmark results\n\n" + section)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def draw_charts(outcomes, raw: Dict[str, Any], plot_dir: pathlib.Path, results: pathlib.Path, *, device: str,
                date: datetime.datetime, echo=None) -> Dict[str, str]:
    """One chart per module that has something to draw (see the module docstring). Returns {name: markdown
    line}: an image link relative to `results`' folder, or a one-line "no chart" note. Never raises for a
    module's data or a plotting failure: those become notes."""
    stamp = date.strftime("%Y%m%d-%H%M%S")
    lines: Dict[str, str] = {}
    try:
        from . import plots
    except Exception as exc:  # e.g. matplotlib missing: the tables matter more than the pictures
        return {name: f"_chart failed: {_one_line(exc)}_" for name, _, _, _ in outcomes}
    for name, status, _, _ in outcomes:
        if status != "ok":
            lines[name] = f"_no chart: the module {'was skipped' if status == 'skipped' else 'failed'}_"
            continue
        target = pathlib.Path(plot_dir) / f"{name}-{device}-{stamp}.png"
        try:
            written = pathlib.Path(plots.plot_benchmark(name, raw.get(name), target))
            link = pathlib.Path(os.path.relpath(written.resolve(), pathlib.Path(results).resolve().parent)).as_posix()
        except plots.NothingToPlot as exc:
            lines[name] = f"_no chart: {' '.join(str(exc).split())}_"
            continue
        except Exception as exc:  # a plotting bug or an unwritable folder must not lose the section
            try:  # no half-written PNG left behind
                target.unlink(missing_ok=True)
            except OSError:
                pass
            lines[name] = f"_chart failed: {_one_line(exc)}_"
            continue
        lines[name] = f"![{name} chart]({link})"
        if echo:
            echo(f"dvg bench: {name}: chart {written}")
    return lines


def main(*, quick: bool = False, gpu: bool = False, results: Optional[str] = None, only: Optional[Sequence[str]] = None,
         bench_dir: Optional[str] = None, plot: Optional[str] = None, echo=None) -> int:
    """`dvg bench`. Returns 0 when every module ran or was skipped, 1 when one failed (the section is
    written either way). `plot`: a folder for one PNG chart per module (created if missing), linked from
    the section. Raises ValueError for a bad --only / --bench-dir / --plot and RuntimeError for --gpu
    without a visible CUDA device."""
    import torch
    echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
    directory = pathlib.Path(bench_dir) if bench_dir else DEFAULT_BENCH_DIR
    if not directory.is_dir():
        raise ValueError(f"bench_dir={str(directory)!r} is not a folder; allowed: a folder of bench_*.py files "
                         f"(the checkout's benchmarks/)")
    device = "cuda" if gpu else "cpu"
    if gpu and not torch.cuda.is_available():
        raise RuntimeError("--gpu was given but no CUDA device is visible (torch.cuda.is_available() is False)")
    if plot is not None and pathlib.Path(plot).exists() and not pathlib.Path(plot).is_dir():
        raise ValueError(f"argument --plot: {plot!r} exists and is not a folder; allowed: a folder (created if "
                         f"missing) for the chart PNGs")
    files = discover(directory, only)
    # Benchmarks import helpers from their own folder (and the tests' tolerance module): on sys.path while they
    # run only, so a later `import bench_x` elsewhere in this process is not shadowed by that folder.
    saved_path = list(sys.path)
    for extra in (directory, REPO_ROOT / "tests"):
        if extra.is_dir() and str(extra) not in sys.path:
            sys.path.insert(0, str(extra))
    raw: Dict[str, Any] = {}
    try:
        outcomes = run_benchmarks(files, device, quick, echo=echo, raw=raw)
    finally:
        sys.path[:] = saved_path
    target = pathlib.Path(results) if results else DEFAULT_RESULTS
    date = datetime.datetime.now(datetime.timezone.utc)
    charts = None if plot is None else draw_charts(outcomes, raw, pathlib.Path(plot), target, device=device,
                                                   date=date, echo=echo)
    section = format_section(outcomes, machine_info(device), device=device, quick=quick, commit=git_commit(),
                             date=date, bench_dir=None if bench_dir is None else directory, charts=charts)
    append_section(target, section)
    echo(f"dvg bench: appended {len(outcomes)} result(s) to {target}")
    print(section)
    return 1 if any(status == "FAILED" for _, status, _, _ in outcomes) else 0
