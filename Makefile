# vidsel: `make test` and `make bench` work on a fresh machine (they create .venv when missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vidsel-deps
export MAX_JOBS ?= 2

.PHONY: setup build test test-fast bench bench-full info clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	VIDSEL_SKIP_EXT=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

# Incremental (ninja): a CPU-only edit rebuilds vidsel._C only. The lock keeps concurrent builds apart.
build: setup
	flock /tmp/vidsel-build.lock $(PY) setup.py -q build_ext --inplace

info: build
	$(PY) -m vidsel.info

# Whole suite: Triton kernels under the interpreter on CPU tensors, C++ CPU kernels, references,
# and the proof that csrc/cuda compiled and linked (tests/ops/test_cuda_build.py).
test: build
	$(PY) -m vidsel.info
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider tests

bench: build
	$(PY) -m benchmarks.run

bench-full: build
	$(PY) -m benchmarks.run --full

clean:
	rm -rf build vidsel/*.so
