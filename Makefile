# homepool: `make demo` (a guided tour) and `make test` (the whole suite) work on a fresh
# Debian or Ubuntu machine; both run `make setup` first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint typecheck unit bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) sh scripts/setup.sh
	touch $@

demo: setup
	$(BIN)/homepool demo

lint: setup
	$(BIN)/ruff check src tests bench scripts

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q

test: lint typecheck unit

# The import benchmark (docs/benchmarks.md); needs root for its loop drives.
bench: setup
	$(BIN)/python bench/import_bench.py --json bench/results/import.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
