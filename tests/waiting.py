"""Waiting for a condition instead of sleeping a fixed time: tests synchronise on what
they wait for, with a generous deadline that only a real failure reaches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0,
               poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str,
                timeout: float = 30.0, poll: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(poll)
