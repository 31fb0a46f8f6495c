# quantum-trader — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
POLICY ?= examples/local-policy.yaml
PYTEST_ARGS ?=

.PHONY: run test lint unit integration bench e2e redis-server clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: an unpinned torch would pull gigabytes of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

## run: the local stack in paper mode on an embedded Redis, replaying real market data
run: $(STAMP)
	$(BIN)/qt run -f $(POLICY)

## redis-server: the tests talk to a real redis-server (Debian package)
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server (Debian package)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check components operator tests bench
	$(BIN)/lint-imports

## test: lint, import layering, unit + integration tests (real redis-server), operator tests
test: $(STAMP) redis-server lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

## bench: benchmarks; results go to docs/BENCHMARKS.md by hand, with this command
bench: $(STAMP) redis-server
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.redis_baseline

## e2e: scenarios against a real cluster (skipped without a kubeconfig)
e2e: $(STAMP)
	$(BIN)/pytest -q -m e2e tests/e2e

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
