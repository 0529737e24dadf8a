"""Herald's ASGI application: the hot endpoints served directly, the rest by FastAPI.

Every publish and every subscription passes here. FastAPI's routing, dependency
and middleware layers cost about 150 µs a request (measured: 4,800 publishes/s
through an APIRoute against 15,400/s straight from ASGI, same handler, one core),
so `POST /publish` and `GET /events` skip them; their errors get the same JSON
answers as FastAPI's routes, and their OpenAPI description is `service.web.openapi`'s.
Their JSON answers go out in one socket write where uvicorn allows it (`direct.answer`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import context, errors
from service.transport import direct
from service.web import routes

log = logging.getLogger("herald")

CORS_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"]


def _header_bytes(scope: Scope) -> int:
    return sum(len(name) + len(value) for name, value in scope["headers"])


class Edge:
    """The ASGI app uvicorn runs; `api` is the FastAPI app behind it."""

    def __init__(self, api: FastAPI, cors_origins: list[str], max_header_bytes: int) -> None:
        self.api = api
        self._max_header_bytes = max_header_bytes
        self._app: ASGIApp = self._route
        if cors_origins:
            self._app = CORSMiddleware(
                self._route,
                allow_origins=cors_origins,
                # Cookies and Authorization only towards origins named one by one.
                allow_credentials="*" not in cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=CORS_HEADERS,
                expose_headers=[
                    "Retry-After",
                    "Idempotency-Key",
                    "Link",
                    "WWW-Authenticate",
                    "Mercure-Last-Event-ID",
                    "Last-Event-ID",
                ],
                max_age=600,
            )

    @property
    def state(self) -> Any:
        return self.api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _header_bytes(scope) > self._max_header_bytes:
            # httptools puts no bound on headers, so the edge answers for them.
            detail = f"request headers exceed {self._max_header_bytes} bytes"
            await JSONResponse({"detail": detail}, 431)(scope, receive, send)
            return
        await self._app(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = routes.HOT.get(scope["path"]) if scope["type"] == "http" else None
        if hot is None:
            await self.api(scope, receive, send)
            return
        handler = hot.get(scope["method"])
        scope["app"] = self.api
        request = Request(scope, receive)
        response: Response
        if handler is None:
            response = JSONResponse(
                {"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(hot)}
            )
        else:
            try:
                response = await handler(context.of(request), request)
            except ClientDisconnect:
                log.debug("%s %s: the client left mid-request", scope["method"], scope["path"])
                return
            except Exception as exc:
                response = errors.response_for(exc, scope["method"], scope["path"])
        if not _answered_at_once(response, send):
            await response(scope, receive, send)


def _answered_at_once(response: Response, send: Send) -> bool:
    # Responses whose body is all there (not a stream, nor a file).
    if type(response) not in (Response, JSONResponse) or response.background is not None:
        return False
    return direct.answer(send, response.status_code, response.raw_headers, response.body)
