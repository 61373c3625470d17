"""GET /: the browser playground, and its static assets under /playground/.

The page is plain HTML, CSS and JavaScript shipped in the package (app/playground/static): no
build step, no CDN, so it works on a machine without internet. It is public (it holds no
secret); every API call it makes carries the key the user types, kept in sessionStorage.
A strict Content-Security-Policy allows only this origin's scripts, styles and API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

ASSETS = Path(__file__).resolve().parents[2] / "playground" / "static"

# No inline script or style anywhere in the page: JS sets sizes through the CSSOM, which
# style-src does not govern. connect-src 'self' keeps the page's calls on this server.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter()


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(ASSETS / "index.html", media_type="text/html; charset=utf-8",
                        headers=SECURITY_HEADERS)


class _Assets(StaticFiles):
    """StaticFiles with the page's security headers on every asset."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *(
                    (k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/playground", _Assets(directory=ASSETS), name="playground")
