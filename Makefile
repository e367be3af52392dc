# fedge: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup demo test test-fast bench lint docs clean

# Install is redone only when the project's dependency files change.
$(STAMP): pyproject.toml constraints.txt requirements-series.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,series,docs]"
	# aeon's declared pins are older than ours (see the series extra): no-deps.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt -r requirements-series.txt
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fedge.simulations.demo

# Two workers: most slow tests wait on Flower's polling and process start-up,
# not on the CPU, so two at a time on two cores nearly halves the wall time.
# worksteal: xdist's default `load` hands each worker contiguous chunks of the
# collection, which put every simulation test (tests/integration, next to each
# other) on one worker while the other ran out of work; an idle worker now takes
# half of the busy one's queue.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not e2e and not integration"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# Style, format and strict types ([tool.ruff] and [tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (mkdocs.yml) into site/; --strict: a broken link, anchor,
# API reference or run-config key fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
