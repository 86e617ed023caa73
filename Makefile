# make demo        : set up .venv (torch CPU build, the package built in place); MMD on the embedded MNIST
#                    digits with every backend vs the naive formula, then MMD-VAE vs ELBO trained on them
# make test        : set up .venv and run the test suite (C++ unit tests, CUDA compile check, pytest)
# make check-wheel : the sdist and wheel with the standard tools, the wheel installed with its core
#                    dependencies only into a fresh venv, `infovae-kernels info` and the core op checks under
#                    every CPU capability this machine has (scripts/check_wheel.sh)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch==2.13.0 is the CPU build on this project's machines; never allow a torch newer than 2.14.1.
TORCH_SPEC ?= torch==2.13.0
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py pyproject.toml

.PHONY: setup build demo test test-python test-cpp check-wheel bench clean

setup: $(VENV)/.deps build

# torch first, pinned, so that nothing after it can pull a newer one; then the package in editable mode
# with its [dev] extra (pyproject.toml), the compiled part left to `build`.
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	INFOVAE_NO_EXTENSION=1 $(BIN)/pip install -q --no-build-isolation -e '.[dev]' "$(TORCH_SPEC)"
	touch $@

build: $(VENV)/.deps infovae_kernels/.built

infovae_kernels/.built: $(SOURCES)
	$(BIN)/python setup.py -q build_ext --inplace
	touch $@

demo: setup
	$(BIN)/python -m infovae_kernels.demo
	$(BIN)/infovae demo --out runs/demo

test: setup test-cpp test-python

test-python: setup
	$(BIN)/python -m pytest -q tests

test-cpp: setup
	cmake -S . -B build/cmake -DPython_EXECUTABLE=$(abspath $(BIN)/python) > /dev/null
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

check-wheel: setup
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" BUILD_PYTHON=$(BIN)/python bash scripts/check_wheel.sh

bench: setup
	$(BIN)/python benchmarks/bench_mmd.py

clean:
	rm -rf build dist infovae_kernels/_C*.so infovae_kernels/_cpu_*.so infovae_kernels/_build_info.py infovae_kernels/.built
