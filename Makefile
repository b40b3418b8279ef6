# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean container

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	touch $(STAMP)

## Run the daemon on the embedded default: SQLite under ./var, SMTP on 127.0.0.1:2525.
run: $(STAMP)
	$(BIN)/mailbridge db upgrade
	$(BIN)/mailbridge run

## Run the whole test suite (installs Python and Debian packages the tests need):
## once on SQLite, then every database test again on a private PostgreSQL.
test: $(STAMP)
	bash scripts/install-test-deps.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	MAILBRIDGE_TEST_BACKEND=postgresql $(BIN)/python -m pytest -q $(PYTEST_ARGS)
	@# Last: the container image (make container). MAILBRIDGE_SKIP_CONTAINER=1 skips it;
	@# a subset run (PYTEST_ARGS set) skips it unless MAILBRIDGE_SKIP_CONTAINER=0.
	@if [ "$${MAILBRIDGE_SKIP_CONTAINER:-$(if $(strip $(PYTEST_ARGS)),1,0)}" = 1 ]; then \
	  echo "container test skipped (MAILBRIDGE_SKIP_CONTAINER=1 or PYTEST_ARGS set)"; \
	else bash scripts/container-test.sh; fi

## Build the container image from nothing with Debian's podman and test it (as root;
## scripts/container-test.sh says how; README: Container).
container:
	bash scripts/container-test.sh

bench: $(STAMP)
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) var .pytest_cache
