"""A streamed Responses or Messages body that ends early (the client gone after the first
events, before any engine output) aborts its engine requests: nothing runs on for nobody.
And the ids these APIs hand out are the server's own, never a client's X-Request-Id."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from app.api.protocols.responses_events import ResponseEvents
from app.api.routes import anthropic_messages, openai_responses
from tests.app_helpers import running_app, settings_for


@dataclass
class FakeStream:
    aborted: bool = False

    def abort(self) -> None:
        self.aborted = True

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(3600)  # no output yet


@dataclass
class FakeRun:
    streams: list[FakeStream] = field(default_factory=lambda: [FakeStream()])
    prompt: list[int] = field(default_factory=lambda: [1, 2, 3])


def test_bodies_closed_after_their_first_event_abort_the_requests() -> None:
    async def main() -> None:
        run = FakeRun()
        body = openai_responses._events(
            run, ResponseEvents(lambda *a: {"id": "resp_x", "status": a[0], "output": a[1]}),
            lambda _: None)  # type: ignore[arg-type]
        assert (await body.__anext__()).startswith("event: response.created")
        await body.aclose()
        assert run.streams[0].aborted

        run = FakeRun()
        head = {"id": "msg_x", "type": "message", "role": "assistant", "model": "m"}
        body = anthropic_messages._events(run, head)  # type: ignore[arg-type]
        assert (await body.__anext__()).startswith("event: message_start")
        await body.aclose()
        assert run.streams[0].aborted

    asyncio.run(main())


def test_ids_are_the_servers_own(checkpoints: dict[str, Any]) -> None:
    async def main() -> None:
        async with running_app(settings_for(f"lm={checkpoints['lm']}")) as (_, client):
            headers = {"x-request-id": "a/b"}
            r = await client.post("/v1/responses", headers=headers, json={
                "model": "lm", "input": "hi", "max_output_tokens": 2})
            rid = r.json()["id"]
            assert "a/b" not in rid and rid.startswith("resp_")
            assert (await client.get(f"/v1/responses/{rid}")).status_code == 200
            again = await client.post("/v1/responses", headers=headers, json={
                "model": "lm", "input": "hi", "max_output_tokens": 2})
            assert again.json()["id"] != rid  # the same X-Request-Id: another response
            m = await client.post("/v1/messages", headers=headers, json={
                "model": "lm", "max_tokens": 2, "messages": [{"role": "user",
                                                              "content": "hi"}]})
            assert "a/b" not in m.json()["id"]
            for content in ("", []):
                bad = await client.post("/v1/messages", json={
                    "model": "lm", "max_tokens": 2, "messages": [{"role": "user",
                                                                  "content": content}]})
                assert bad.status_code == 400, bad.text
                assert bad.json()["error"]["type"] == "invalid_request_error"

    asyncio.run(main())
