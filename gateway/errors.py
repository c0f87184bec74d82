"""The gateway's own exceptions. Third-party errors (grpc, tritonclient, redis) are converted into these at
the module that talks to them (`raise ... from exc`); `gateway.api.errors` maps them to HTTP in one table.

GatewayError
├── BadRequest                 the client's fault: a 4xx with {"error": {"code", "message", "field"}}
│   ├── MalformedRequest       not JSON, a wrong type, a missing field (400)
│   ├── InvalidRequest         well-formed but breaks a rule the gateway relies on (422)
│   ├── ForgedNotice           a notice URL whose signature, key, fields or expiry do not check out (403)
│   └── RequestTooLarge        body, imp or candidate count over a configured limit (413)
├── ScoringError               Triton could not score in time
│   ├── ScoringUnavailable     model not ready, bad answer, breaker open, no healthy Triton
│   │   └── ScoringUnreachable the one Triton called could not be reached (connection refused/lost)
│   └── ScoringTimeout         the request's deadline passed before Triton answered
│       └── ScoringNoAnswer    the call was sent and the server stayed silent to the end (hung or drowning)
├── Overloaded                 admission control: too many bids in flight in this worker (503)
├── StoreError                 a feature/ad store backend failed
├── DiscoveryError             the Triton name did not resolve (the fleet keeps the addresses it had)
├── LocalTritonError           the local Triton launcher could not bring the server up (CLI only)
└── CatalogError               a campaign catalog file is invalid (names the line and field); the old
                               catalog keeps serving
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class BadRequest(GatewayError):
    """A request the gateway refuses; `code` is stable and machine-readable, `field` a JSON path or None."""

    status_code = 400

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class MalformedRequest(BadRequest):
    """The body is not the JSON document the schema describes."""


class InvalidRequest(BadRequest):
    """Well-formed, but breaks a rule the decision relies on."""

    status_code = 422


class ForgedNotice(BadRequest):
    """A notice URL the gateway did not sign as it arrived: nothing it says may move money. `check`
    names the failing check (signature, unknown_key, currency, expired) for metrics and logs."""

    status_code = 403

    def __init__(self, check: str, message: str, field: str | None = None) -> None:
        super().__init__("forged_notice", message, field)
        self.check = check


class RequestTooLarge(BadRequest):
    status_code = 413


class ScoringError(GatewayError):
    """Triton could not score the candidates."""


class ScoringUnavailable(ScoringError):
    """Triton is unreachable, the model is not ready, or the breaker is open."""


class ScoringUnreachable(ScoringUnavailable):
    """gRPC UNAVAILABLE from one Triton: no connection, or it dropped. The request did not run there, so
    another server may take it at once (the fleet retries it and ejects that server)."""


class ScoringTimeout(ScoringError):
    """The deadline passed before Triton answered."""


class ScoringNoAnswer(ScoringTimeout):
    """gRPC DEADLINE_EXCEEDED: sent, never answered. Unlike Triton dropping a request from its queue (a
    live server, busy), repeated silence is how a hung server looks, so the fleet counts it per server."""


class Overloaded(GatewayError):
    """This worker already has its limit of bids in flight; answering now beats queueing."""


class StoreError(GatewayError):
    """A feature or ad store backend failed."""


class DiscoveryError(GatewayError):
    """Resolving the Triton target's name failed or gave no address."""


class LocalTritonError(GatewayError):
    """The local Triton launcher failed; the message is the one line the operator needs."""


class CatalogError(GatewayError):
    """A campaign catalog that cannot be loaded: `line` (1-based, None when not about one line) and `field`
    (a path inside that line's JSON object, like "creatives[0].banner.sizes[1].w", or None)."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line
        self.field = field
        self.detail = message
