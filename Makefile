# `make demo` and `make test` work on a fresh machine: each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# requirements.lock: what the image installs; requirements-dev.lock: the same pins plus the
# test and lint tools. Both carry hashes; `make lock` refreshes them from PyPI.
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
PIP_TOOLS := pip-tools==7.6.2

.PHONY: demo test lint typecheck unit bench clean k8s-configmaps lock image image-test fuzz soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A current pip (the installer; twice as fast here as the 23.x a venv starts with), then every
# dependency from the lock, hash-checked, then runwatch itself (editable) with the setuptools
# the lock pinned, so nothing unhashed is fetched to build it.
$(STAMP): pyproject.toml $(DEV_LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install -qq --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/runwatch up

lint: $(STAMP)
	$(BIN)/ruff check consumers tests benchmarks
	$(BIN)/ruff format --check consumers tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest on PYTEST_WORKERS processes (pytest-xdist; 0 runs it in this one), a whole test
# file to each at a time, so module fixtures start once: the tests mostly wait on brokers,
# servers and subprocesses, and two workers halve the wall time on 2 cores
# (docs/development.md).
PYTEST_WORKERS ?= 2
test: lint typecheck
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

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
		$(BIN)/pytest -q -p no:cacheprovider tests/test_decode_fuzz.py tests/test_rule_fuzz.py

# The long versions of tests `make test` runs small (docs/development.md, "What the suite
# runs small"): three replicas over 20,000 events instead of 5,000, the 15 s broker outage.
soak: $(STAMP)
	RUNWATCH_TEST_FULL=1 $(BIN)/pytest -q tests/test_replicas.py tests/test_chaos.py

# deploy/kubernetes/configmaps.yaml from alert_rules/ and templates/ (a test checks it is current)
k8s-configmaps: $(STAMP)
	$(BIN)/python deploy/kubernetes/build_configmaps.py

# Re-resolve both lock files to the newest releases pyproject.toml allows, from PyPI only
# (a local pip.conf index or find-links must not leak into the hashes). The dev lock is
# constrained to the runtime lock, so tests run the versions the image ships.
LOCK_ENV := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= CUSTOM_COMPILE_COMMAND="make lock"
COMPILE := $(BIN)/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe \
	--all-build-deps --strip-extras --index-url https://pypi.org/simple
lock: | $(BIN)/python
	$(BIN)/pip install --quiet $(PIP_TOOLS)
	$(LOCK_ENV) $(COMPILE) -o $(LOCK) pyproject.toml
	$(LOCK_ENV) $(COMPILE) --extra dev -c $(LOCK) -o $(DEV_LOCK) pyproject.toml

# The container image, built with podman from deploy/Dockerfile on a local Debian base
# (deploy/podman/build-image.sh; see docs/operations.md "Container image").
image:
	deploy/podman/build-image.sh

# The image built, then run against a real broker, SMTP server and PostgreSQL.
image-test: $(STAMP)
	$(BIN)/pytest -q tests/test_image.py

clean:
	rm -rf $(VENV) .runwatch-demo .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
