# make demo: install if needed, train on the built-in dataset, write a sample grid.
# make test: install if needed, run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# bytecode written (a machine may set PYTHONDONTWRITEBYTECODE): the tests start ganctl as a
# process some hundred times, and pytest's rewritten test modules are cached for its workers
test: install
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest

demo: install
	$(BIN)/ganctl train
	$(BIN)/ganctl sample -n 64 demo.png
	@echo "demo grid: $(CURDIR)/demo.png"

lint: install
	$(BIN)/python -m ruff check ganctl tests benchmarks
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
