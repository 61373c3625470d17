"""How a request's outputs reach its reader.

OutputCollector holds at most one pending output per request: when the reader is slower
than the engine (a paused SSE client, a full socket), new outputs merge into the pending
one instead of queueing, so memory stays bounded by the request's own text, never by how
far behind the reader is (vLLM's output collector does the same). RequestStream is the
async iterator a caller gets from Engine.submit(); closing it early aborts the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from app.engine.output import RequestOutput, RequestSummary


class OutputCollector:
    def __init__(self) -> None:
        self._pending: RequestOutput | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, output: RequestOutput) -> None:
        if self._pending is None:
            self._pending = output  # the engine hands each output over: ours to merge into
        else:
            self._pending.merge(output)
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """End the stream with an error (after any output still pending)."""
        self._error = error
        self._ready.set()

    async def get(self) -> RequestOutput:
        """The next (merged) output; raises the error once the outputs are read."""
        while self._pending is None and self._error is None:
            self._ready.clear()
            await self._ready.wait()
        output, self._pending = self._pending, None
        if output is not None:
            return output
        raise self._error or RuntimeError("stream ended without an output")


class RequestStream:
    """Async iterator over one request's outputs, ending after the finished one."""

    def __init__(self, request_id: str, model: str, collector: OutputCollector,
                 abort: Callable[[str], None], summary: Callable[[], RequestSummary]) -> None:
        self.request_id = request_id
        self.model = model
        self._collector = collector
        self._abort = abort
        self._summary = summary
        self.final: RequestOutput | None = None  # the finished output, once read

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        done = False
        try:
            while True:
                try:
                    item = await self._collector.get()
                except Exception:  # the engine ended the request with an error
                    done = True
                    raise
                if item.finished:
                    done = True
                    self.final = item
                yield item
                if item.finished:
                    return
        finally:
            if not done:  # consumer went away (disconnect, cancellation, break)
                self.abort()

    def abort(self) -> None:
        """Cancel the request (a no-op once it has finished)."""
        self._abort(self.request_id)

    def summary(self) -> RequestSummary:
        """Counts, finish reasons and timings so far (for logs)."""
        return self._summary()

    async def collect(self) -> list[RequestOutput]:
        return [out async for out in self]
