"""Logging: JSON lines or plain text, with the request id of the current request.
`auto` (the default) is text when stderr is a terminal (a person reads it) and JSON
otherwise (a container, a file, a log shipper). Configured once by the serve command; no
module configures logging at import."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

# The current HTTP request's id (set by the request middleware), added to every record.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# uvicorn passes its message again with ANSI colour codes, for its own coloured formatter;
# in ours it is noise (raw escape codes in JSON and in files), never data.
_DROPPED = {"color_message"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """What was passed with `extra=`: the record's data beyond the standard fields."""
    return {k: v for k, v in vars(record).items()
            if k not in _STANDARD and k not in _DROPPED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = _extras(record)
        request_id = request_id_var.get()
        if request_id is not None:
            extras.setdefault("request_id", request_id)
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """`auto` -> text on a terminal, json otherwise; json and text as given."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure(level: str = "info", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, sys.stderr) == "json"
                         else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log duplicates our per-request log line.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
