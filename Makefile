# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv if it is missing. torch is installed first and pinned, then used as a
# constraint for everything else so no other package can replace it with a CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
CONSTRAINTS := $(VENV)/constraints.txt

.PHONY: demo test bench clean-venv help

help:
	@echo "make demo   - set up .venv, fetch the nuclei sample, train, prune, predict, report"
	@echo "make test   - set up .venv, run the test suite"
	@echo "make bench  - speed and memory benchmarks -> docs/benchmarks.md"

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	echo "torch==$(TORCH_VERSION)" > $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	$(BIN)/python -c "import torch, unetpp; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	touch $@

.venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/unetpp demo --out runs/demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py --out docs/benchmarks.md

clean-venv:
	rm -rf $(VENV)
