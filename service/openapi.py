"""The OpenAPI description of the endpoints `service.edge` serves outside FastAPI."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from service.models import EVENT_PATTERN, TOPIC_PATTERN, Published, PublishEvent

_REF = "#/components/schemas/{model}"


def _error(description: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _paths(event_ref: dict[str, Any], published_ref: dict[str, Any]) -> dict[str, Any]:
    publish = {
        "summary": "Publish one event or a batch",
        "operationId": "publish",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            event_ref,
                            {"type": "array", "items": event_ref, "minItems": 1},
                        ]
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "Stored: where each event went, in order for a batch.",
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [published_ref, {"type": "array", "items": published_ref}]
                        }
                    }
                },
            },
            "413": _error("The body, an event or the batch is over its limit."),
            "422": _error("The body is not a valid event or batch."),
            "503": _error("Redis is unreachable; retry after `Retry-After` seconds."),
        },
    }
    events = {
        "summary": "Subscribe to topics over Server-Sent Events",
        "operationId": "events",
        "parameters": [
            {
                "name": "topic",
                "in": "query",
                "required": True,
                "description": "Repeat for several topics.",
                "schema": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "pattern": TOPIC_PATTERN},
                },
            },
            {
                "name": "lastEventId",
                "in": "query",
                "required": False,
                "description": "Resume position when no header can be set.",
                "schema": {"type": "string"},
            },
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "Resume position; wins over the query parameter.",
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": {
                "description": "The event stream; event types match " + EVENT_PATTERN,
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": _error("Too many topics, or a malformed Last-Event-ID."),
            "422": _error("No topic, or an invalid topic name."),
            "503": _error("Redis is unreachable; retry after `Retry-After` seconds."),
        },
    }
    return {"/publish": {"post": publish}, "/events": {"get": events}}


def install(api: FastAPI) -> None:
    """Make `api`'s OpenAPI schema include the edge endpoints."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, summary=api.summary, routes=api.routes
            )
            refs, definitions = models_json_schema(
                [(PublishEvent, "validation"), (Published, "serialization")], ref_template=_REF
            )
            paths = _paths(refs[(PublishEvent, "validation")], refs[(Published, "serialization")])
            schema["paths"] = {**paths, **schema.get("paths", {})}
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                definitions["$defs"]
            )
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
