# dvg_engine — set-up, demo, tests, benchmarks.
# `make demo` and `make test` each create .venv (if missing) and install what they need:
# the CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build), then the
# package without build isolation so setup.py sees that torch and builds the C++ extension.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.dvg-installed

.PHONY: venv demo plan test test-fast bench bench-quick gpu-check aot-check clean

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --no-build-isolation -e ".[test,video]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dvg demo

plan: $(STAMP)
	$(VENV)/bin/dvg plan --model hunyuan-video --height 720 --width 1280 --frames 129 --steps 50 --budget 0.5 --spatial-demand 0.3 --temporal-demand 0.3

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/dvg bench

bench-quick: $(STAMP)
	$(VENV)/bin/dvg bench --quick

# Uses the venv's python when there is one, else the host's (an offline GPU host: pass
# GPU_CHECK_ARGS="--wheels DIR" for what it lacks). Without a GPU it says so and exits 0.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Compiles every Triton kernel the ops launch for sm_90 and sm_80 (to cubin) on a machine without a GPU,
# catching what the interpreter accepts and compiled Triton rejects (tests/test_triton_compile.py runs it).
aot-check: $(STAMP)
	$(PY) benchmarks/aot_compile.py

clean:
	rm -rf $(VENV) build *.egg-info dvg_engine/*.so outputs
