"""The server's listening socket, bound before anything slow happens.

`serve` binds it first, before torch is imported and the models load, so a busy port
fails in well under a second with a message naming the address, instead of after the
start-up work; uvicorn then serves on this very socket (no window for another process to
take the port in between).
"""

from __future__ import annotations

import errno
import socket


class CannotListen(Exception):
    """The address cannot be bound; the message names it and what to do."""


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening, as uvicorn would bind it
    (SO_REUSEADDR, so a port left in TIME_WAIT by a previous run is reusable, but one in use
    is not)."""
    host = host.removeprefix("[").removesuffix("]")  # "[::1]" as in a URL
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now, not only bound: two sockets with SO_REUSEADDR may both be bound
        # to a port that is not yet listened on, so only listen() claims it. uvicorn's own
        # listen() on this socket later is harmless.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(
                f"cannot listen on {shown}: the port is already in use (another server "
                "running?); stop it, or choose another port with --port or LLM_PORT"
            ) from None
        raise CannotListen(f"cannot listen on {shown}: {exc.strerror or exc} (check --host "
                           "/ LLM_HOST and --port / LLM_PORT)") from None
    sock.set_inheritable(True)
    return sock
