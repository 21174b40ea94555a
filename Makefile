# One entry point for people and CI. `make demo` runs the demo; `make test` runs every check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PRISM  := tools/prism/node_modules/.bin/prism

# Older SDK majors we claim: the routing, fallback, stream and lifecycle suites run on each.
OLD_SDKS := 1.109.1 2.54.0
SDK_TESTS := tests/test_surfaces.py tests/test_fallback.py tests/test_streams.py \
             tests/test_lifecycle.py tests/test_semconv_values.py

.PHONY: demo test lint pytest test-sdks bench install clean

demo: $(STAMP)
	$(BIN)/openai-bluegreen demo

test: $(STAMP) $(PRISM) lint pytest test-sdks

pytest: $(STAMP) $(PRISM)
	$(BIN)/python -m pytest

test-sdks: $(STAMP)
	@for v in $(OLD_SDKS); do \
	  echo "== openai $$v"; \
	  [ -x .venv-openai-$$v/bin/python ] || $(PYTHON) -m venv .venv-openai-$$v; \
	  .venv-openai-$$v/bin/python -m pip install --quiet "openai==$$v" -e '.[dev]' || exit 1; \
	  .venv-openai-$$v/bin/python -m pytest -q -p no:cacheprovider $(SDK_TESTS) || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy
	$(BIN)/mypy --python-version 3.10

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/worker_interval.py
	$(BIN)/python benchmarks/hotpath.py
	$(BIN)/python benchmarks/detection.py

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
	rm -rf $(VENV) .venv-openai-* tools/prism/node_modules .pytest_cache .mypy_cache .ruff_cache
