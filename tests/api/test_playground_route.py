"""GET / and its assets as routes (the page's behaviour is tested in a browser:
tests/browser)."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI


def test_playground_is_on_by_default_and_off_with_no_playground(api: Any) -> None:
    async def fetch(app: FastAPI, client: httpx.AsyncClient) -> list[int]:
        return [(await client.get(path)).status_code
                for path in ("/", "/playground/playground.js", "/v1/models")]

    assert api(fetch) == [200, 200, 200]
    assert api(fetch, playground=False) == [404, 404, 200]


def test_playground_is_not_in_the_api_schema(api: Any) -> None:
    async def paths(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
        schema: dict[str, Any] = (await client.get("/openapi.json")).json()
        return schema["paths"]

    assert "/" not in api(paths)
