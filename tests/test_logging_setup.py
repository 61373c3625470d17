"""Logs a person reads: no raw ANSI escapes from uvicorn's colour_message in either format,
and `auto` picks text on a terminal, JSON elsewhere."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app.logging_setup import JsonFormatter, TextFormatter, configure, resolve_format

COLOURED = "Uvicorn running on \x1b[1m%s://%s:%d\x1b[0m (Press CTRL+C to quit)"


def uvicorn_record() -> logging.LogRecord:
    """A record as uvicorn makes it: the plain message, and a coloured copy in extra."""
    record = logging.getLogger("uvicorn.error").makeRecord(
        "uvicorn.error", logging.INFO, __file__, 1,
        "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", ("http", "127.0.0.1", 8000),
        None, extra={"color_message": COLOURED, "request_id": "r-1"})
    return record


def test_color_message_is_dropped_from_json_and_text() -> None:
    entry = json.loads(JsonFormatter().format(uvicorn_record()))
    assert "color_message" not in entry
    assert entry["message"] == "Uvicorn running on http://127.0.0.1:8000 (Press CTRL+C to quit)"
    assert entry["request_id"] == "r-1"  # other extras are still data
    text = TextFormatter().format(uvicorn_record())
    assert "\x1b" not in text and "color_message" not in text
    assert text.endswith("(Press CTRL+C to quit) request_id=r-1")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert resolve_format("auto", _Stream(tty=True)) == "text"
    assert resolve_format("auto", _Stream(tty=False)) == "json"
    for explicit in ("json", "text"):
        assert resolve_format(explicit, _Stream(tty=True)) == explicit
        assert resolve_format(explicit, _Stream(tty=False)) == explicit


def test_configure_auto_follows_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        for tty, formatter in ((True, TextFormatter), (False, JsonFormatter)):
            monkeypatch.setattr("sys.stderr", _Stream(tty))
            configure("info", "auto")
            assert isinstance(root.handlers[0].formatter, formatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
