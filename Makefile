# The two commands: `make run` and `make test`. Everything lives in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test install install-test lint typecheck bench cluster clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	touch $@ $(STAMP)

install: $(STAMP)  ## install the project into .venv (leaves .venv/bin/charging-api)

install-test: $(TEST_STAMP)

run: $(STAMP)  ## serve with the embedded defaults (app API :8082, OCPP :8081, SQLite in ./data)
	$(BIN)/charging-api serve

cluster: $(STAMP)  ## 2 gateways + 2 api nodes behind HAProxy on :8080 (the machine's Redis and PostgreSQL; docs/scaling.md)
	$(BIN)/python -m charging_api.cluster.local

node_modules/.package-lock.json: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# The checks, in the order they fail fastest. .pre-commit-config.yaml runs the same ones.
lint: $(TEST_STAMP)  ## format check, ruff, mypy --strict, import contracts
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint node_modules/.package-lock.json  ## lint, then the whole suite with branch coverage of src/
	$(BIN)/python -m pytest -q --cov --cov-report=term

bench: $(TEST_STAMP) node_modules/.package-lock.json  ## the performance benchmarks (not run by CI)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules data .pytest_cache .mypy_cache .ruff_cache
