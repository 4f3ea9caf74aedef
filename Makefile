# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit services bench lock clean

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "aes-gateway needs Python 3.11 or newer"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aes-gateway demo

test: $(STAMP) services lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

services:
	bash scripts/ensure-services.sh

bench: $(STAMP)
	$(BIN)/python bench/replay.py

# Both lock files brought up to the newest releases pyproject.toml allows, with pip-tools in a
# venv of its own (a tool, not a dependency). Then measure against the old lock (README).
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --disable-pip-version-check pip-tools
	.venv-lock/bin/pip-compile --quiet --upgrade --no-emit-find-links --no-emit-index-url \
	  --output-file=requirements.lock --strip-extras pyproject.toml
	.venv-lock/bin/pip-compile --quiet --upgrade --extra=dev --no-emit-find-links \
	  --no-emit-index-url --output-file=requirements-dev.lock --strip-extras pyproject.toml
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-lock .demo .pytest_cache .mypy_cache .ruff_cache
