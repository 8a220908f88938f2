# vidsel: `make test` and `make bench` work on a fresh machine (they create .venv when missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vidsel-deps
export MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: setup build test test-fast test-long bench bench-full info clean gpu-check

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
# and the proof that csrc/cuda compiled and linked (tests/ops/test_cuda_build.py). On a machine with a
# CUDA device the backend tests also run cuda and compiled Triton on CUDA tensors (tests/conftest.py).
test: build
	$(PY) -m vidsel.info
	$(PY) -m pytest -q -p no:cacheprovider tests

# Longer hypothesis profile (2000 examples per op and backend) for the property tests.
test-long: build
	VIDSEL_HYPOTHESIS_PROFILE=long TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider tests/ops/test_properties.py
	VIDSEL_FUZZ_MUTATIONS=2000 $(PY) -m pytest -q -p no:cacheprovider tests/io/test_reader_fuzz.py

bench: build
	$(PY) -m benchmarks.run

bench-full: build
	$(PY) -m benchmarks.run --full

# On one H100/H200 from a fresh clone: set up, build (csrc/cuda for sm_90), run the CUDA-device tests (every
# backend comparison on CUDA tensors, compiled Triton included) and the GPU benchmark, which writes
# benchmarks/results/gpu.{json,md}. Without an NVIDIA GPU it says so and exits 0. DRY=1 runs the
# benchmark script end to end on CPU (Triton interpreter, tiny shapes); `make test` covers that too.
gpu-check:
ifeq ($(DRY),1)
	$(MAKE) build
	TRITON_INTERPRET=1 $(PY) -m benchmarks.gpu_check --dry-run --out build/gpu-check-dry
else
	@if ! nvidia-smi -L >/dev/null 2>&1; then \
		echo "gpu-check: no NVIDIA GPU on this machine; nothing to check (make gpu-check DRY=1 runs it on CPU)"; \
	else \
		$(MAKE) build && \
		$(PY) -m pytest -q -p no:cacheprovider tests -k cuda && \
		$(PY) -m benchmarks.gpu_check; \
	fi
endif

clean:
	rm -rf build vidsel/*.so
