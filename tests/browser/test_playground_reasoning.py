"""The playground's chat shows a reasoning model's reasoning apart from its answer: a real
Chromium against a real server of a tiny checkpoint with DeepSeek-R1's template (the
prompt opens <think>) and --reasoning-parser auto."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from app.tokenizer import Tokenizer
from tests.browser.test_playground import page  # noqa: F401 (the fixture)
from tests.chat.families import build_family_checkpoint
from tests.live import LiveServer

Page = Any  # playwright.sync_api.Page


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer
            ) -> Iterator[LiveServer]:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    directory = build_family_checkpoint("deepseek_r1", tokenizer,
                                        tmp_path_factory.mktemp("r1"))
    with LiveServer("--model", f"r1={directory}", "--reasoning-parser", "auto") as live:
        yield live


def test_chat_shows_reasoning_apart(page: Page, thinker: LiveServer) -> None:  # noqa: F811
    page.goto(thinker.url + "/")
    page.wait_for_selector("#chat-model option[value='r1']", state="attached")
    page.click("#tab-chat")
    page.fill("#chat-max-tokens", "8")
    page.fill("#chat-input", "2+2?")
    page.click("#chat-send")
    page.wait_for_selector("#chat-status:has-text('finish')", timeout=60_000)
    # 8 tokens of a random model inside an opened <think>: reasoning, shown as such
    reply = page.locator("#chat-messages li.assistant .content").inner_text()
    assert reply.startswith("(thinking) "), reply
