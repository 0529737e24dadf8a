"""The interactive API docs, `/docs` (Swagger UI) and `/redoc`, from files Herald serves.

FastAPI's own pages load their scripts from a CDN, so they stay blank without the
internet and trust a third party with script on Herald's origin. Here the scripts come
from the fastapi-offline package (Swagger UI 5 and ReDoc 2, refreshed with each of its
releases), Swagger UI starts from a file of its own instead of an inline script, and
both pages carry a Content-Security-Policy that lets nothing load from elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

_VENDORED = Path(fastapi_offline.__file__).parent / "static"
_ASSETS = {
    "swagger-ui-bundle.js": _VENDORED / "swagger-ui-bundle.js",
    "swagger-ui.css": _VENDORED / "swagger-ui.css",
    "redoc.standalone.js": _VENDORED / "redoc.standalone.js",
    "favicon.png": _VENDORED / "favicon.png",
    "swagger-init.js": Path(__file__).parent / "static" / "swagger-init.js",
}
# Assets change only with an upgrade of Herald or fastapi-offline; an ETag check after.
_ASSET_CACHE = {"Cache-Control": "public, max-age=3600"}

_COMMON_POLICY = [
    "default-src 'none'",
    "script-src 'self'",
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
]
_SWAGGER_HEADERS = {
    "Content-Security-Policy": "; ".join([*_COMMON_POLICY, "style-src 'self'"]),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# ReDoc writes its styles into <style> elements it creates, and searches in a worker it
# starts from a blob: URL.
_REDOC_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [*_COMMON_POLICY, "style-src 'self' 'unsafe-inline'", "worker-src 'self' blob:"]
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# Relative URLs: the pages keep working behind a proxy that serves Herald under a prefix.
_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Herald API - Swagger UI</title>
<link rel="icon" href="docs/assets/favicon.png">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="openapi.json"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/swagger-init.js"></script>
</body>
</html>
"""

_REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Herald API - ReDoc</title>
<link rel="icon" href="docs/assets/favicon.png">
</head>
<body>
<redoc spec-url="openapi.json"></redoc>
<script src="docs/assets/redoc.standalone.js"></script>
</body>
</html>
"""


def router() -> APIRouter:
    """The routes of `/docs`, `/redoc` and their assets."""
    docs = APIRouter(include_in_schema=False)

    @docs.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(_SWAGGER_PAGE, headers=_SWAGGER_HEADERS)

    @docs.get("/redoc")
    async def redoc() -> HTMLResponse:
        return HTMLResponse(_REDOC_PAGE, headers=_REDOC_HEADERS)

    @docs.get("/docs/assets/{name}")
    async def asset(name: str) -> FileResponse:
        path = _ASSETS.get(name)
        if path is None:
            raise HTTPException(404, f"no docs asset {name!r}")
        return FileResponse(path, headers=_ASSET_CACHE)

    return docs
