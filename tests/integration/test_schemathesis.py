"""Schemathesis against the served /openapi.json: every operation the gateway documents, with bodies and
query strings generated from its own schemas (valid and deliberately invalid), against the real gateway on
the real Triton and a real Redis (so the notice and event routes reach their store, not a 501).

The contract, whatever comes in: no 5xx, the status is one the operation documents, the body matches the
documented schema for it (a BidResponse, or the one error shape naming the problem). Complements
test_fuzz.py, whose hand-broken bodies (truncated JSON, junk in every field) no schema would generate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

from gateway.config import Settings
from gateway.local_triton import LocalTriton
from tests.integration.gateway_server import serve_in_thread
from tests.integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 60
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def gateway_url(triton: LocalTriton, redis_server: RedisServer) -> Iterator[str]:
    settings = Settings(
        triton_url=triton.http_address,
        store_backend="redis",
        redis_url=redis_server.url,
        overload_lag_target_ms=0,  # generated traffic is bursty: never shed it as CPU overload
    )
    with serve_in_thread(settings) as url:
        yield url


@pytest.fixture(scope="module")
def operations(gateway_url: str) -> dict[str, Operation]:
    loaded = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    found = {}
    for result in loaded.get_all_operations():
        if isinstance(result, Err):  # an operation schemathesis cannot read: the schema itself is wrong
            raise result.err()
        operation = result.ok()
        found[f"{operation.method.upper()} {operation.path}"] = operation
    return found


def test_the_schema_documents_the_bid_and_notice_routes(
    operations: dict[str, Operation],
) -> None:
    # Guards the test below against fuzzing an empty or stale schema.
    assert {"POST /v1/bid", "POST /v1/events/win", "GET /readyz"} <= set(operations)


def fuzz(operation: Operation, mode: GenerationMode, base_url: str) -> int:
    """Runs the operation's generated cases through the checks; returns how many ran. Raises on a failure."""
    ran = 0

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,  # reproducible in CI: a failure names its example
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def call(case: schemathesis.Case[Any]) -> None:
        nonlocal ran
        ran += 1
        case.call_and_validate(base_url=base_url, checks=CHECKS)

    try:
        call()
    except hypothesis.errors.Unsatisfiable:
        # Negative mode on an operation with no parameters and no body: nothing can be made invalid.
        assert mode is GenerationMode.NEGATIVE, operation.label
    return ran


# schemathesis' pytest integration (`schema.parametrize`, `from_fixture`) does not run under pytest 9, so each
# operation is driven through its hypothesis strategy here: the same generation and checks.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_every_documented_operation_keeps_its_contract(
    operations: dict[str, Operation], gateway_url: str, mode: GenerationMode
) -> None:
    failures: dict[str, str] = {}
    exercised: dict[str, int] = {}
    for name, operation in sorted(operations.items()):
        try:
            exercised[name] = fuzz(operation, mode, gateway_url)
        except AssertionError as failure:  # schemathesis' FailureGroup is an AssertionError too
            failures[name] = str(failure)[:2000]
    assert not failures, "\n\n".join(f"{name}:\n{text}" for name, text in failures.items())
    for name in ("POST /v1/bid", "POST /v1/events/win"):
        assert exercised[name] >= EXAMPLES_PER_OPERATION // 2, exercised
