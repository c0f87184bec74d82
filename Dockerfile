# syntax=docker/dockerfile:1
# bid-gateway image: `python -m gateway serve` (uvicorn, BIDGW_WORKERS workers) on port 8000.
# The builder resolves and compiles the runtime dependencies into a venv; the final stage copies only that
# venv, the package and the feature snapshots onto a clean slim base: no compiler, no pip cache, non-root.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Only for dependencies without a wheel on this platform (e.g. arm64); never reaches the final image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first: this layer stays cached until pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir gateway && touch gateway/__init__.py \
    && pip install --upgrade pip wheel \
    && pip wheel --wheel-dir /wheels . \
    && pip install --no-index --find-links /wheels $(ls /wheels/*.whl | grep -v '/bid_gateway-') \
    && rm -rf gateway /wheels
# Then the package itself, non-editable, with no extras: runtime dependencies only (no dev/train/triton).
COPY gateway/ gateway/
RUN pip install --no-deps . \
    && python -c "import gateway.app, gateway.cli"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="bid-gateway" \
      org.opencontainers.image.description="OpenRTB 2.6 ad-ranking gateway in front of NVIDIA Triton"
RUN groupadd --system --gid 10001 bidgw \
    && useradd --system --uid 10001 --gid bidgw --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bidgw
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY data/snapshots/ /app/data/snapshots/
# The default catalog plain OpenRTB requests are bid from; a deployment mounts its own (or uses Redis).
COPY data/catalog/ /app/data/catalog/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIDGW_HOST=0.0.0.0 \
    BIDGW_PORT=8000 \
    BIDGW_WORKERS=1 \
    BIDGW_SNAPSHOT_DIR=/app/data/snapshots \
    BIDGW_CATALOG_PATH=/app/data/catalog/catalog.jsonl \
    BIDGW_NOTICE_ALLOW_DEV_KEY=false
USER 10001:10001
EXPOSE 8000
# Liveness only (the process serves HTTP); readiness (/readyz: can this replica bid) belongs to the orchestrator.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BIDGW_PORT', '8000') + '/healthz', timeout=2)"]
# Exec form: uvicorn is PID 1 and receives SIGTERM itself (the app turns unready, waits, then drains).
CMD ["python", "-m", "gateway", "serve"]
