# `make demo` and `make test` work on a fresh machine: each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean k8s-configmaps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/runwatch up

lint: $(STAMP)
	$(BIN)/ruff check consumers tests benchmarks
	$(BIN)/ruff format --check consumers tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/alerting.py
	$(BIN)/python benchmarks/lifecycle.py

# deploy/kubernetes/configmaps.yaml from alert_rules/ and templates/ (a test checks it is current)
k8s-configmaps: $(STAMP)
	$(BIN)/python deploy/kubernetes/build_configmaps.py

clean:
	rm -rf $(VENV) .runwatch-demo .pytest_cache .mypy_cache .ruff_cache
