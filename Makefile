# One command for every habit. Each target creates the virtual environment it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# The frameworks the fidelity tests run for real, pinned as the models were checked against them.
FRAMEWORKS := tensorflow-cpu==2.21.0 tf-keras==2.21.0 keras==3.15.1 scikit-learn==1.9.1

.PHONY: run test test-fast lint types bench check clean

# The optional extras (torch, jax, tensorflow, keras, sklearn, plot, dask, parquet) stay optional
# for users; here they are installed so their tests run. torch is pinned first: an unpinned torch would pull several GB of CUDA packages.
CORE   := $(VENV)/.core

# `make run` needs only the core dependencies (numpy, mpmath, click, rich, ml_dtypes): seconds.
$(CORE): pyproject.toml $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(CORE)

$(STAMP): $(CORE)
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet $(FRAMEWORKS)
	$(BIN)/python -m pip install --quiet -e '.[dev,torch,jax,plot,dask,parquet,tensorflow,keras,sklearn]'
	touch $(STAMP)

run: $(CORE)  ## the main job: the float32 sweep on the shipped defaults, core dependencies only
	$(BIN)/bce-audit sweep --config configs/default.toml --dtype float32

test: $(STAMP)
	$(BIN)/python -m pytest

# Leaves out the tests marked slow (more than a few seconds each), on every core (pytest-xdist):
# under a minute on two cores. `make test` runs them all, one at a time.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n auto

lint: $(STAMP)
	$(BIN)/ruff check bce_audit tests bench

# mypy's settings, and the package it checks, are in pyproject.toml ([tool.mypy]).
types: $(STAMP)
	$(BIN)/mypy

# Byte-compiled first, as an installed package is: where PYTHONDONTWRITEBYTECODE is set, each
# start would otherwise compile the package's sources again (about 60 ms of the start-up).
bench: $(STAMP)
	$(BIN)/python -m compileall -q bce_audit
	$(BIN)/python bench/bench.py

check: lint types test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info
