# Two commands: `make demo` and `make test`. Both set everything up from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system demo test lint typecheck pytest bench reliability clean

setup: $(STAMP) system

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml pathoai_memobs/_rest.c | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Real Prometheus, promtool, Alertmanager and amtool for the tests and the stack.
system:
	@bash .ci/install-system.sh

demo: setup
	$(VENV)/bin/pathoai-memobs demo

lint: $(STAMP)
	$(VENV)/bin/ruff check pathoai_memobs tests bench grafana
	$(VENV)/bin/ruff format --check pathoai_memobs tests bench grafana

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict pathoai_memobs

pytest: setup
	$(PY) -m pytest

test: setup lint typecheck pytest

bench: setup
	$(PY) -m bench

# The bad-input, fault and soak suites, and docs/reliability.md from what they tried.
reliability: setup
	$(PY) -m tests.reliability

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info pathoai_memobs/*.so pathoai_memobs/_assets
