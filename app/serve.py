"""`python -m app serve`: run the API under uvicorn, with a graceful drain on SIGTERM.

First SIGTERM/SIGINT: readiness turns 503 at once and new requests get 503, in-flight
requests run to completion (up to --drain-timeout), then the server exits 0. A second
signal exits at once. A model that fails to load or an engine that dies exits 1; an
address that cannot be bound exits 2 at once, before torch and the models load.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import torch
import uvicorn

from app.api.state import Phase, ServerState
from app.config import Settings
from app.logging_setup import configure
from app.main import create_app

log = logging.getLogger("app.serve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self.exit_code = 0
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def state(self) -> ServerState | None:
        app = self.config.loaded_app
        # uvicorn wraps the app in middleware; the FastAPI app is at the bottom.
        while app is not None and not hasattr(app, "state"):
            app = getattr(app, "app", None)
        return getattr(getattr(app, "state", None), "server", None)

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def fatal(self, reason: str) -> None:
        log.critical("fatal: %s; exiting with status 1", reason)
        self.exit_code = 1
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = self.state
        if self._draining or state is None or self._loop is None:
            self.force_exit = self._draining
            super().handle_exit(sig, frame)
            return
        self._draining = True
        log.info("signal %s: draining (up to %.0fs)", signal.Signals(sig).name,
                 self.settings.drain_timeout)
        if state.phase is Phase.READY:
            state.phase = Phase.DRAINING
        loop = self._loop
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(state)))

    async def _drain(self, state: ServerState) -> None:
        results = await asyncio.gather(*(m.engine.drain(self.settings.drain_timeout)
                                         for m in state.models.values()))
        if not all(results):
            log.warning("drain timeout reached with requests still running; aborting them")
        self.should_exit = True


def serve(settings: Settings, sock: socket.socket | None = None) -> int:
    """Run until stopped; `sock` is the listening socket bound beforehand (app.listen),
    else uvicorn binds settings.host:settings.port itself."""
    configure(settings.log_level, settings.log_format)
    if sock is not None:
        # uvicorn logs its "running on" line only for sockets it binds itself.
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("listening on http://%s:%d (Ctrl+C to stop)", shown, port)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    holder: dict[str, DrainingServer] = {}
    app = create_app(settings, on_fatal=lambda reason: holder["server"].fatal(reason))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            timeout_graceful_shutdown=5, access_log=False,
                            timeout_keep_alive=settings.keep_alive_timeout)
    server = DrainingServer(config, settings)
    holder["server"] = server
    server.run(sockets=None if sock is None else [sock])
    return server.exit_code
