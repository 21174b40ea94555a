# One entry point for people and CI. `make demo` runs the demo; `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PRISM  := tools/prism/node_modules/.bin/prism

.PHONY: demo test lint pytest bench install clean

demo: $(STAMP)
	$(BIN)/openai-bluegreen demo

test: $(STAMP) $(PRISM) lint pytest

pytest: $(STAMP) $(PRISM)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

install: $(STAMP) $(PRISM)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

$(PRISM): tools/prism/package.json tools/prism/package-lock.json
	npm ci --prefix tools/prism --no-audit --no-fund --silent
	touch $(PRISM)

clean:
	rm -rf $(VENV) tools/prism/node_modules .pytest_cache .mypy_cache .ruff_cache
