"""OpenAPI fragments shared by the routes: bodies are decoded by msgspec from raw bytes (several times
cheaper than FastAPI's pydantic path), so their schemas are attached to the operations by hand."""

from __future__ import annotations

from typing import Any, Final

ERROR_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"], "description": "JSON path of the offending field"},
            },
        }
    },
}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A response (or request body) entry whose application/json content follows `schema`."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> dict[str, Any]:
    return json_content(ERROR_SCHEMA, description)
