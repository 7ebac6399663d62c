# concilium: two commands for a new machine.
#   make demo   set up .venv and run the full demo on the embedded benchmark
#   make test   set up .venv and run the test suite
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-quick test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/concilium demo --out runs/demo

demo-quick: setup
	$(BIN)/concilium demo --quick --out runs/demo-quick

test: setup
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check src tests benchmarks experiments

clean:
	rm -rf $(VENV) runs .pytest_cache
