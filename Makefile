# `make demo` and `make test` work on a fresh machine: each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench fuzz clean k8s-configmaps

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

# Longer fuzzing of decode() than the suite's: atheris (coverage-guided, libFuzzer) for
# FUZZ_SECONDS, then the hypothesis properties of tests/test_decode_fuzz.py with random seeds
# and FUZZ_EXAMPLES examples each. Without an atheris wheel for this platform (it builds with
# clang), only the hypothesis run happens.
FUZZ_SECONDS ?= 300
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	@$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/pip install --quiet 'atheris>=2.3' \
		|| echo "atheris cannot be installed here: running the hypothesis properties only"
	@if $(BIN)/python -c "import atheris" 2>/dev/null; then \
		$(BIN)/python benchmarks/fuzz_decode.py -max_total_time=$(FUZZ_SECONDS); fi
	RUNWATCH_FUZZ=long RUNWATCH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(BIN)/pytest -q -p no:cacheprovider tests/test_decode_fuzz.py

# deploy/kubernetes/configmaps.yaml from alert_rules/ and templates/ (a test checks it is current)
k8s-configmaps: $(STAMP)
	$(BIN)/python deploy/kubernetes/build_configmaps.py

clean:
	rm -rf $(VENV) .runwatch-demo .pytest_cache .mypy_cache .ruff_cache
