"""The playground lists LoRA adapters: a real Chromium against a real server of a tiny
Llama with an adapter written by peft. The adapter is offered wherever its base model is
(named as an adapter of it), generates under its own name, and the server panel shows it
on a row of its own (rank, requests, resident or not)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.test_playground import page  # noqa: F401 (the fixture)
from tests.live import LiveServer
from tests.lora_adapters import write_adapter

Page = Any  # playwright.sync_api.Page


@pytest.fixture(scope="module")
def adapted(hf_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[LiveServer]:
    base = hf_checkpoint("llama_gqa_llama3")[0]
    adapter = write_adapter(base, tmp_path_factory.mktemp("lora") / "tuned", seed=3)
    with LiveServer("--model", f"lm={base}", "--lora", f"tuned={adapter}") as live:
        yield live


def test_adapters_are_offered_and_shown(page: Page, adapted: LiveServer) -> None:  # noqa: F811
    page.goto(adapted.url + "/")
    option = page.locator("#gen-model option[value='tuned']")
    option.wait_for(state="attached")
    assert option.inner_text() == "tuned (LoRA adapter of lm)"
    assert page.locator("#chat-model option[value='tuned']").count() == 1
    page.click("#tab-server")
    row = page.locator("#srv-rows tr[data-model='tuned']")
    row.wait_for()
    assert "LoRA adapter (rank 4)" in row.inner_text()
    assert page.locator("#srv-rows tr").count() == 2  # the model, then its adapter
