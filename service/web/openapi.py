"""The OpenAPI description of the endpoints `service.web.edge` serves outside FastAPI."""

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
    return {
        "/publish": {"post": publish},
        "/events": {"get": events},
        "/.well-known/mercure": _mercure(),
    }


def _strings(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
    }


def _mercure() -> dict[str, Any]:
    """The Mercure hub (README: Herald as a Mercure hub)."""
    field = {"type": "string"}
    publish = {
        "summary": "Mercure: publish an update",
        "operationId": "mercure_publish",
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "topic": {"type": "array", "items": field, "minItems": 1},
                            "data": field,
                            "private": field,
                            "id": field,
                            "type": field,
                            "retry": {"type": "string", "pattern": "^[0-9]{1,10}$"},
                        },
                        "required": ["topic"],
                    },
                    "encoding": {"topic": {"style": "form", "explode": True}},
                }
            },
        },
        "responses": {
            "200": {
                "description": "Stored; the body is the update's id.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "400": _error("A field the protocol refuses (see the README)."),
            "401": _error("No token, or one that does not verify (WWW-Authenticate says)."),
            "403": _error("The token may not publish to every topic of the update."),
            "413": _error("The body, the data or the topics are over their limit."),
            "415": _error("The body is not application/x-www-form-urlencoded."),
            "503": _error("Redis is unreachable; retry after `Retry-After` seconds."),
        },
    }
    subscribe = {
        "summary": "Mercure: subscribe to the updates of matching topics",
        "operationId": "mercure_subscribe",
        "parameters": [
            _strings("match", "Exact topic; `*` for every topic."),
            _strings("match_exact", "Exact topic (the explicit spelling of `match`)."),
            _strings("match_urlpattern", "A URL pattern."),
            _strings("topic", "v0: an exact topic or an RFC 6570 URI template."),
            {"name": "last_event_id", "in": "query", "schema": {"type": "string"}},
            {"name": "lastEventID", "in": "query", "schema": {"type": "string"}},
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "The event stream; `Mercure-Last-Event-ID` when resuming.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": _error("No matcher, an unknown `match…` parameter or an invalid pattern."),
            "401": _error("A token is required, or it does not verify."),
            "503": _error("Redis is unreachable, or this process holds its stream limit."),
        },
    }
    return {"post": publish, "get": subscribe}


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
