"""Every command in README.md runs, except those marked with a trailing `# needs GPU` or
`# downloads weights` (for a ```python block: on its first line).

Rules, so the suite never recurses into itself or touches tracked files:
* the README's first code block is exactly `make demo` and `make test`;
* `make test` is checked, not run: the Makefile's `test` target runs pytest on tests/ and `.ci/run`
  calls `make test` (running it here would run this suite again);
* `make demo` runs what the Makefile's `demo` recipe runs (`dvg demo` with its arguments), with
  `--out` pointing into a temporary folder — the venv set-up part of the target is what `make test`
  itself exercises;
* every other command runs in bash in a temporary working directory with the venv's `bin/` first on
  PATH; `dvg bench` gets `--results` in that folder so benchmarks/RESULTS.md is never written.
"""
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARKERS = ("# needs GPU", "# downloads weights")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
DEMO_BUDGET_S = 180  # the bound for the demo run itself on the 2-core CI machine


def _blocks():
    return [(lang, body) for lang, body in FENCE.findall(README.read_text(encoding="utf-8"))]


def _commands(body):
    """Lines of a shell block, with backslash continuations joined and comments/blank lines dropped."""
    out, pending = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _marked(text):
    return any(text.rstrip().endswith(marker) or marker + ";" in text for marker in MARKERS)


def _shell_commands():
    cmds = []
    for lang, body in _blocks():
        if lang in ("bash", "sh", "shell", "console", ""):
            cmds += _commands(body)
    return cmds


def _python_blocks():
    return [body for lang, body in _blocks() if lang == "python"]


def _env(tmp_path):
    env = dict(os.environ)
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"  # a README command that needs the network must be marked
    env["MPLBACKEND"] = "Agg"
    env.pop("TRITON_INTERPRET", None)  # the README's commands run as a user would run them
    return env


def _dvg_exe():
    exe = pathlib.Path(sys.executable).with_name("dvg")
    return shlex.quote(str(exe)) if exe.exists() else f"{shlex.quote(sys.executable)} -m dvg_engine.cli"


def _makefile_recipe(target):
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
    assert match, f"the Makefile has no {target!r} target"
    return [line.strip() for line in match.group(1).splitlines()]


# ---------------------------------------------------------------------------------------------------

def test_first_block_is_make_demo_then_make_test():
    lang, body = _blocks()[0]
    assert [line.strip() for line in body.strip().splitlines()] == ["make demo", "make test"]


def test_readme_sections_present():
    text = README.read_text()
    for heading in ("## Python API", "## Command line", "## Choosing a budget", "## Supported pipelines",
                    "## Backends", "## GPU checks", "## Results", "## Limits"):
        assert heading in text, heading
    for needle in ("DVG_BACKEND", "benchmarks/RESULTS.md", "±0.02", "make gpu-check  # needs GPU",
                   "HunyuanVideo15ImageToVideoPipeline", "compile_pipeline"):
        assert needle in text, needle


def test_make_test_runs_pytest_and_ci_calls_it():
    recipe = _makefile_recipe("test")
    assert any("pytest" in line and "tests" in line for line in recipe), recipe
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^\s*make test\s*$", ci, re.M), ".ci/run must call the README's test command"
    assert "set -e" in ci  # and fail when it fails


def test_make_demo_runs_the_demo(tmp_path):
    """`make demo` = `dvg demo` (after the venv set-up): run that command, into a temporary folder."""
    recipe = [line for line in _makefile_recipe("demo") if "dvg" in line]
    assert len(recipe) == 1 and re.search(r"/dvg demo\b", recipe[0]), recipe
    args = recipe[0].split("dvg demo", 1)[1]
    out = tmp_path / "demo"
    start = time.perf_counter()
    proc = subprocess.run(f"{_dvg_exe()} demo{args} --out {shlex.quote(str(out))} --no-progress", shell=True,
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("baseline.mp4", "dvg.mp4", "compare.mp4", "plan.png", "report.json"):
        assert (out / name).is_file(), name
    assert "RANDOM weights" in proc.stdout and "speedup" in proc.stdout
    print(f"dvg demo (the make demo command) took {seconds:.1f} s")
    if os.environ.get("DVG_CHECK_DEMO_TIME") == "1":  # meaningful on an unshared CI machine only
        assert seconds < DEMO_BUDGET_S, f"the demo took {seconds:.0f} s; allowed: < {DEMO_BUDGET_S} s"


def _runnable_shell():
    out = []
    for cmd in _shell_commands():
        if cmd in ("make demo", "make test") or _marked(cmd):
            continue
        out.append(cmd)
    return out


def test_readme_has_runnable_and_marked_commands():
    cmds = _shell_commands()
    assert any(_marked(c) for c in cmds) and len(_runnable_shell()) >= 5
    for cmd in _runnable_shell():
        assert cmd.split()[0] in ("dvg", "make") or re.match(r"^[A-Z_]+=\S+ dvg ", cmd), (
            f"unexpected README command {cmd!r}: extend tests/test_readme.py to run it safely")


def _write_first_frame(path):
    from PIL import Image
    import numpy as np
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    rgb[16:48, 16:48, 1] = 200
    Image.fromarray(rgb).save(path)


@pytest.mark.parametrize("command", _runnable_shell())
def test_readme_command_runs(command, tmp_path):
    if re.search(r"(^|\s)dvg bench\b", command):
        command += f" --results {shlex.quote(str(tmp_path / 'RESULTS.md'))}"
    if command.startswith("make "):
        target = command.split()[1]
        recipe = [line for line in _makefile_recipe(target) if "$(VENV)/bin/dvg" in line]
        assert recipe, f"make {target}: only targets that run dvg are run here"
        command = recipe[0].replace("$(VENV)/bin/dvg", "dvg")
    if "first_frame.png" in command:
        _write_first_frame(tmp_path / "first_frame.png")  # the README's stand-in for the user's own picture
    command = re.sub(r"(^|\s)dvg(\s)", lambda m: m.group(1) + _dvg_exe() + m.group(2), command, count=1)
    proc = subprocess.run(command, shell=True, executable="/bin/bash", cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{command}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    if "bench" in command:
        assert "## dvg bench" in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index, tmp_path):
    body = _python_blocks()[index]
    if _marked(body.strip().splitlines()[0]):
        pytest.skip(f"marked: {body.strip().splitlines()[0]}")
    script = tmp_path / "example.py"
    script.write_text(body)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
