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

.PHONY: install install-train system-deps run triton serve test test-fast lint format train clean

$(STAMPS):
	mkdir -p $(STAMPS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install when the dependency list changes.
$(STAMPS)/install: pyproject.toml | $(BIN)/python $(STAMPS)
	$(BIN)/pip install --quiet -e '.[dev,train]'
	touch $@

install: $(STAMPS)/install

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
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Regenerates the synthetic logs and snapshots, retrains both model versions and rewrites the model card.
train: install
	$(BIN)/python -m training.train --out triton_models/ranker --snapshots data/snapshots

clean:
	rm -rf $(VENV) $(STAMPS) .mypy_cache .ruff_cache .pytest_cache
