"""/docs (Swagger UI) and /redoc, served entirely by this server: they work offline.

FastAPI's own pages load their JavaScript and CSS from a CDN, so on a machine without
internet access /docs is blank. The assets here come from the `fastapi-offline` package
(a pinned runtime dependency that ships Swagger UI 5 and ReDoc 2 builds), mounted at
/static-docs, through FastAPI's self-hosting recipe: the app is created with
docs_url=None and redoc_url=None, and these routes render the same pages pointing at the
local files.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api.errors import anthropic_route
from app.api.responses import NULL

STATIC_URL = "/static-docs"
# Swagger UI: keep the key given to "Authorize" across reloads; no call to the online
# validator (it would be a request to the internet from a page meant to work offline).
# The key typed into Authorize is not persisted (it would stay in localStorage for good).
SWAGGER_PARAMETERS = {"persistAuthorization": False, "validatorUrl": None,
                      "displayRequestDuration": True}


def _assets() -> str:
    return str(files("fastapi_offline") / "static")


def _drop_impossible_422(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 for every route with parameters; a GET whose only
    parameter is an optional string (`/tokenizer_info?model=`) can never fail
    validation, so only routes with a body keep theirs (app.api.responses); Anthropic's
    routes answer a body that fails the schema with 400 (app.api.errors)."""
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            if "requestBody" not in operation or anthropic_route(path):
                operation.get("responses", {}).pop("422", None)
    # Their schemas, now referenced by nothing (ValidationError only by the other).
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{name}"' not in json.dumps(
                [schema.get("paths"), {k: v for k, v in components.items() if k != name}]):
            components.pop(name, None)


def _restore_nulls(value: Any) -> Any:
    """app.api.responses.NULL back to null, all through the schema."""
    if value == NULL:
        return None
    if isinstance(value, dict):
        return {k: _restore_nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_nulls(v) for v in value]
    return value


def install(app: FastAPI) -> None:
    """The docs pages and their assets; the app must be created with docs_url=None,
    redoc_url=None."""
    app.mount(STATIC_URL, StaticFiles(directory=_assets()), name="static-docs")
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()  # generate() caches it in app.openapi_schema
            _drop_impossible_422(schema)
            app.openapi_schema = _restore_nulls(schema)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_PARAMETERS)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png", with_google_fonts=False)
