"""The playground page (GET /) in a real Chromium against a real `python -m app serve`:
each panel does what a person would try, and what the page shows equals what the API
answers. Screenshots of every panel are written to a temporary folder."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import API_KEY, playwright_sync
from tests.helpers import require_tool
from tests.live import LiveServer
from tests.waiting import wait_until

Page = Any  # playwright.sync_api.Page


def expect(locator: Any) -> Any:
    """Playwright's expect (looked up when used: the module imports without Playwright,
    and the browser fixture then says it is missing)."""
    assert playwright_sync is not None
    return playwright_sync.expect(locator)


def run_curl(page: Page, prefix: str, env: dict[str, str] | None = None) -> str:
    """Run a panel's "last request as a curl command" (#PREFIX-curl) in a shell; its
    stdout."""
    require_tool("curl", shutil.which("curl") is not None,
                 "install Debian's curl package: the page's curl commands are run as shown")
    page.click(f"details:has(#{prefix}-curl) summary")
    command = page.inner_text(f"#{prefix}-curl")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout


def sent_body(page: Page, prefix: str) -> Any:
    """The JSON body of a panel's last request, read from its curl command (#PREFIX-curl)
    as a shell would parse it."""
    page.click(f"details:has(#{prefix}-curl) summary")
    words = shlex.split(page.inner_text(f"#{prefix}-curl").replace("\\\n", " "))
    return json.loads(words[words.index("-d") + 1])


def metric(url: str, name: str, model: str = "default-lm") -> float:
    """A sample of a gauge or counter (a labelled counter appears at its first increment)."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            return float(line.split()[-1])
    if name.endswith("_total"):
        return 0.0
    raise AssertionError(f"{name} for {model} not in /metrics")


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    """A fresh tab (fresh sessionStorage); fails the test on a script error or a CSP
    violation, both of which Chromium reports on the console."""
    context = browser.new_context(viewport={"width": 1200, "height": 850})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.on("console", lambda msg: problems.append(f"console: {msg.text}")
           if msg.type == "error" and not msg.text.startswith("Failed to load resource")
           else None)
    yield tab
    context.close()
    assert not problems, problems


def open_page(page: Page, server: LiveServer) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("#gen-model option[value='default-lm']", state="attached")


def test_page_is_served_with_a_strict_csp_and_no_external_resources(server: LiveServer) -> None:
    root = httpx.get(server.url + "/")
    assert root.status_code == 200 and root.headers["content-type"].startswith("text/html")
    csp = root.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "http://" not in root.text and "https://" not in root.text
    for asset in ("playground.js", "playground.css"):
        got = httpx.get(f"{server.url}/playground/{asset}")
        assert got.status_code == 200 and got.headers["x-content-type-options"] == "nosniff"
        assert "http://" not in got.text and "https://" not in got.text, asset
    # Only the static folder is served: not the package's Python files, not parents
    # (http.client sends the path as written; httpx would normalise the "..").
    for path in ("/playground/__init__.py", "/playground/../config.py",
                 "/playground/%2e%2e/config.py", "/playground/..%2f..%2fconfig.py"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        assert status == 404, path


def test_generate_streams_text_with_probabilities(page: Page, server: LiveServer,
                                                   screenshots: Path) -> None:
    open_page(page, server)
    page.fill("#gen-prompt", "The best thing about computers is")
    page.fill("#gen-seed", "3")
    page.fill("#gen-max-tokens", "24")
    page.click("#gen-run")
    page.wait_for_selector("#gen-status:has-text('tokens/s')", timeout=60_000)
    tokens = page.locator("#gen-output .tok")
    assert tokens.count() >= 1
    # Every shaded token carries its probability; hovering one lists its alternatives.
    probs = [float(p) for p in tokens.evaluate_all("els => els.map(e => e.dataset.prob)")]
    assert all(0 <= p <= 1 for p in probs)
    tokens.first.hover()
    assert page.locator("#gen-token-info tr").count() >= 2
    # The same request through the API gives the same text (seeded sampling).
    body = {"prompt": "The best thing about computers is", "seed": 3, "max_tokens": 24,
            "temperature": 0.8, "top_k": 0, "top_p": 1, "ignore_eos": False}
    want = httpx.post(server.url + "/v1/generate", json=body, timeout=60).json()["text"]
    shown = page.inner_text("#gen-output")
    assert shown == "The best thing about computers is" + want
    # The shown curl command is the same request: the same text, streamed.
    events = [json.loads(line[6:]) for line in run_curl(page, "gen").splitlines()
              if line.startswith("data: {")]
    assert "".join(e.get("text", "") for e in events) == want
    page.screenshot(path=str(screenshots / "generate.png"), full_page=True)


def test_stop_aborts_the_request(page: Page, server: LiveServer) -> None:
    open_page(page, server)
    aborts = metric(server.url, "llm_request_aborts_total")
    page.fill("#gen-prompt", "Once upon a time")
    page.fill("#gen-max-tokens", "250")  # about the whole context: seconds on a CPU
    page.check("#gen-ignore-eos")
    page.click("#gen-run")
    page.locator("#gen-output .tok").nth(2).wait_for(timeout=60_000)
    page.click("#gen-stop-button")
    page.wait_for_selector("#gen-status:has-text('stopped')")
    wait_until(lambda: metric(server.url, "llm_requests_running") == 0, timeout=30,
               what="the running count to go back to 0")
    assert metric(server.url, "llm_request_aborts_total") == aborts + 1
    assert page.is_enabled("#gen-run") and not page.is_enabled("#gen-stop-button")
    shown = page.locator("#gen-output .tok").count()
    assert 3 <= shown < 250


def test_next_token_chart_equals_the_api_and_bars_extend_the_prompt(
        page: Page, server: LiveServer, screenshots: Path) -> None:
    open_page(page, server)
    page.click("#tab-next")
    page.fill("#next-prompt", "Love is")
    page.fill("#next-top-k", "7")
    page.click("#next-run")
    page.wait_for_selector("#next-chart .bar")

    def shown() -> list[tuple[str, float]]:
        return [(b["label"], float(b["value"])) for b in page.locator("#next-chart .bar")
                .evaluate_all("els => els.map(e => ({...e.dataset}))")]

    def api(text: str, temperature: float) -> dict[str, Any]:
        return httpx.post(server.url + "/v1/predict", json={
            "text": text, "top_k": 7, "temperature": temperature}).json()

    want = api("Love is", 1.0)
    assert shown() == [(p["token"], p["prob"]) for p in want["predictions"]]
    assert json.loads(run_curl(page, "next"))["predictions"] == want["predictions"]
    top = page.locator("#next-chart .bar.top")
    assert top.count() == 1 and top.get_attribute("data-label") == want["argmax"]["token"]
    page.screenshot(path=str(screenshots / "next-token.png"), full_page=True)

    # The temperature slider redraws the chart with the server's tempered distribution.
    page.fill("#next-temperature", "2")
    hot = api("Love is", 2.0)
    expect(page.locator("#next-chart .bar").first).to_have_attribute(
        "data-value", repr(hot["predictions"][0]["prob"]))
    assert shown() == [(p["token"], p["prob"]) for p in hot["predictions"]]

    # Choosing a bar appends its token and predicts again.
    second = want["predictions"][1]["token"]
    page.locator("#next-chart .bar").nth(1).click()
    assert page.input_value("#next-prompt") == "Love is" + second
    after = api("Love is" + second, 2.0)
    expect(page.locator("#next-chart .bar").first).to_have_attribute(
        "data-value", repr(after["predictions"][0]["prob"]))
    assert shown() == [(p["token"], p["prob"]) for p in after["predictions"]]


def test_chat_streams_a_reply_through_the_chat_template(page: Page, server: LiveServer,
                                                        screenshots: Path) -> None:
    open_page(page, server)
    page.click("#tab-chat")
    page.fill("#chat-max-tokens", "16")
    page.fill("#chat-input", "Tell me a fortune.")
    page.click("#chat-send")
    page.wait_for_selector("#chat-status:has-text('finish')", timeout=60_000)
    assert page.locator("#chat-messages li.user").inner_text().endswith("Tell me a fortune.")
    assert page.locator("#chat-messages li.assistant .content").inner_text().strip()
    page.click("#chat-rendered-box summary")
    # Rendered by its own requests, alongside the reply's stream: waited for.
    expect(page.locator("#chat-rendered")).to_contain_text(
        "<|im_start|>user\nTell me a fortune.<|im_end|>")
    page.screenshot(path=str(screenshots / "chat.png"), full_page=True)


def test_chat_sends_tools_and_shows_the_call(page: Page, server: LiveServer,
                                             screenshots: Path) -> None:
    """The tools box: its JSON goes with the request (tool_choice required makes the
    default-lm call), the call shows in the reply, the rendered prompt holds the tools,
    and text that is not JSON is refused before anything is sent."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"]}}}]
    open_page(page, server)
    page.click("#tab-chat")
    page.fill("#chat-max-tokens", "60")
    page.click("#chat-tools-box summary")
    page.fill("#chat-tools", "[{not json")
    page.fill("#chat-input", "Weather in Paris?")
    page.click("#chat-send")
    expect(page.locator("#chat-error")).to_contain_text("Tools: not valid JSON")
    assert page.locator("#chat-messages li").count() == 0
    assert page.input_value("#chat-input") == "Weather in Paris?"
    page.fill("#chat-tools", json.dumps(tools))
    page.select_option("#chat-tool-choice", "required")
    page.uncheck("#chat-parallel")  # one call: a second one would not fit max_tokens
    page.click("#chat-send")
    page.wait_for_selector("#chat-status:has-text('finish: tool_calls')", timeout=60_000)
    sent = sent_body(page, "chat")
    assert sent["tools"] == tools and sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is False
    reply = page.locator("#chat-messages li.assistant .content").inner_text()
    assert "\u2192 get_weather({" in reply, reply
    arguments = json.loads(reply.split("\u2192 get_weather(", 1)[1].rstrip(")"))
    assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 8
    page.click("#chat-rendered-box summary")
    expect(page.locator("#chat-rendered")).to_contain_text('"name":"get_weather"')
    page.screenshot(path=str(screenshots / "chat-tools.png"), full_page=True)


def test_classify_shows_head_and_zero_shot_labels(page: Page, server: LiveServer,
                                                  screenshots: Path) -> None:
    open_page(page, server)
    page.click("#tab-classify")
    assert page.input_value("#cls-model") == "fortune-classifier"
    page.fill("#cls-text", "A bug in the kernel crashed the computer.")
    page.click("#cls-run")
    page.wait_for_selector("#cls-chart .bar")
    want = httpx.post(server.url + "/v1/classify", json={
        "model": "fortune-classifier", "text": "A bug in the kernel crashed the computer."}).json()
    labels = page.locator("#cls-chart .bar").evaluate_all("els => els.map(e => e.dataset.label)")
    assert labels == [s["label"] for s in want["scores"]] and len(labels) == 10
    assert page.locator("#cls-chart .bar.top").get_attribute("data-label") == want["label"]
    page.screenshot(path=str(screenshots / "classify.png"), full_page=True)

    page.select_option("#cls-model", "default-lm")
    page.fill("#cls-labels", "computers, food, love")
    page.click("#cls-run")
    expect(page.locator("#cls-chart .bar")).to_have_count(3)
    labels = page.locator("#cls-chart .bar").evaluate_all("els => els.map(e => e.dataset.label)")
    assert sorted(labels) == ["computers", "food", "love"]


def test_api_errors_show_the_servers_message(page: Page, server: LiveServer) -> None:
    open_page(page, server)
    long_prompt = "word " * 2000
    want = httpx.post(server.url + "/v1/generate", json={"prompt": long_prompt}).json()
    page.fill("#gen-prompt", long_prompt)
    page.click("#gen-run")
    error = page.locator("#gen-error")
    error.wait_for(state="visible")
    assert want["error"]["message"] in error.inner_text() and "HTTP 400" in error.inner_text()
    # The zero-shot call without labels on a language model: the server's 400, verbatim.
    page.click("#tab-classify")
    page.select_option("#cls-model", "default-lm")
    page.click("#cls-run")
    page.locator("#cls-error").wait_for(state="visible")
    want = httpx.post(server.url + "/v1/classify", json={
        "model": "default-lm", "text": page.input_value("#cls-text")}).json()
    assert want["error"]["message"] in page.inner_text("#cls-error")


def test_server_panel_shows_load(page: Page, server: LiveServer, screenshots: Path) -> None:
    open_page(page, server)
    page.click("#tab-server")
    row = page.locator("#srv-rows tr[data-model='default-lm']")
    row.wait_for()
    assert page.locator("#srv-rows tr").count() == 2
    assert row.locator("td.running").inner_text() == "0"
    # A request in flight (a stream read slowly by this test) shows as running.
    started, release = threading.Event(), threading.Event()

    def generate() -> None:
        with httpx.stream("POST", server.url + "/v1/generate", timeout=60, json={
                "prompt": "Once upon a time", "max_tokens": 250, "ignore_eos": True,
                "stream": True}) as stream:
            for _ in stream.iter_lines():
                started.set()
                if release.is_set():
                    break

    reader = threading.Thread(target=generate)
    reader.start()
    try:
        assert started.wait(60)
        wait_until(lambda: metric(server.url, "llm_requests_running") == 1, timeout=30,
                   what="the request to run")
        page.click("#srv-refresh")
        expect(row.locator("td.running")).to_have_text("1")
        assert "blocks" in row.inner_text() and "0 / " not in row.inner_text()
        page.screenshot(path=str(screenshots / "server.png"), full_page=True)
    finally:
        release.set()
        reader.join(60)


def test_keyboard_and_narrow_window(page: Page, server: LiveServer, screenshots: Path) -> None:
    open_page(page, server)
    page.focus("#tab-generate")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-chat", "aria-selected") == "true"
    assert page.is_visible("#panel-chat") and not page.is_visible("#panel-generate")
    page.keyboard.press("End")
    assert page.get_attribute("#tab-server", "aria-selected") == "true"
    # Every form control has a label a screen reader can announce.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => !e.labels || e.labels.length === 0).map(e => e.id)""")
    assert unlabelled == []
    page.set_viewport_size({"width": 380, "height": 800})
    page.click("#tab-next")
    page.click("#next-run")
    page.wait_for_selector("#next-chart .bar")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    page.screenshot(path=str(screenshots / "narrow.png"), full_page=True)


def test_api_key_is_asked_for_and_kept_in_session_storage(page: Page, keyed_server: LiveServer,
                                                          screenshots: Path) -> None:
    page.goto(keyed_server.url + "/")  # the page itself needs no key
    error = page.locator("#global-error")
    error.wait_for(state="visible")
    assert "API key" in error.inner_text() and "HTTP 401" in error.inner_text()
    page.click("#tab-next")
    page.click("#next-run")
    page.locator("#next-error").wait_for(state="visible")
    assert "missing API key" in page.inner_text("#next-error")
    page.screenshot(path=str(screenshots / "api-key-missing.png"), full_page=True)

    page.fill("#api-key", API_KEY)
    page.click("#key-save")
    page.wait_for_selector("#next-model option[value='default-lm']", state="attached")
    assert page.is_hidden("#global-error")
    page.click("#next-run")
    page.wait_for_selector("#next-chart .bar")
    assert page.is_hidden("#next-error")
    # The curl command takes the key from the environment; it never shows it.
    assert API_KEY not in page.inner_text("#next-curl")
    assert "predictions" in json.loads(run_curl(page, "next", {"LLM_API_KEY": API_KEY}))
    storage = page.evaluate("() => [sessionStorage.length, localStorage.length, document.cookie]")
    assert storage == [1, 0, ""]
    # A wrong key is refused with the server's message.
    page.fill("#api-key", "wrong")
    page.click("#key-save")
    error.wait_for(state="visible")
    assert "invalid API key" in error.inner_text()


def test_chat_clear_during_a_reply_leaves_no_orphan_turn(page: Page, server: LiveServer) -> None:
    open_page(page, server)
    page.click("#tab-chat")
    page.fill("#chat-max-tokens", "200")
    page.fill("#chat-input", "first")
    page.click("#chat-send")
    page.click("#chat-clear")  # while the reply streams (or just after it ended)
    assert page.locator("#chat-messages li").count() == 0
    page.fill("#chat-max-tokens", "8")
    page.fill("#chat-input", "second")
    page.click("#chat-send")
    page.wait_for_selector("#chat-status:has-text('finish')", timeout=60_000)
    sent = sent_body(page, "chat")
    assert sent["messages"] == [{"role": "user", "content": "second"}]
    assert page.locator("#chat-messages li").count() == 2
    wait_until(lambda: metric(server.url, "llm_requests_running") == 0, timeout=30,
               what="the cleared reply to be aborted")


def test_stream_parsing_crlf_and_a_cut_stream(page: Page, server: LiveServer) -> None:
    """What a proxy may do to the stream: CRLF line endings (parsed), or cutting it before
    [DONE] (reported, not shown as a finished generation)."""
    open_page(page, server)
    page.uncheck("#gen-logprobs")
    event = json.dumps({"index": 0, "prompt_index": 0, "text": " hi", "finish_reason": "stop"})
    bodies = [f"data: {event}\r\n\r\ndata: [DONE]\r\n\r\n", f"data: {event}\n\n"]
    page.route("**/v1/generate", lambda route: route.fulfill(
        status=200, content_type="text/event-stream", body=bodies.pop(0)))
    page.fill("#gen-prompt", "Say")
    page.click("#gen-run")
    page.wait_for_selector("#gen-status:has-text('finish: stop')")
    assert page.inner_text("#gen-output") == "Say hi"
    page.click("#gen-run")
    error = page.locator("#gen-error")
    error.wait_for(state="visible")
    assert "ended before it was complete" in error.inner_text()


def test_stop_strings_are_sent_as_typed(page: Page, server: LiveServer) -> None:
    open_page(page, server)
    page.fill("#gen-max-tokens", "4")
    page.fill("#gen-stop", "\\n | END |  the end ")
    page.click("#gen-run")
    page.wait_for_selector("#gen-status:has-text('finish')", timeout=60_000)
    sent = sent_body(page, "gen")
    assert sent["stop"] == ["\n", "END", "the end"]


def test_a_handler_that_throws_mid_stream_cancels_the_request(page: Page,
                                                             server: LiveServer) -> None:
    """Guards defect 10: when processing a streamed event threw, the page stopped reading
    but left the stream open, and the server generated on to max_tokens."""
    open_page(page, server)
    aborts = metric(server.url, "llm_request_aborts_total")
    generated = metric(server.url, "llm_generation_tokens_total")
    max_tokens = 250  # about the whole context: seconds on a CPU
    page.fill("#gen-prompt", "Once upon a time")
    page.fill("#gen-max-tokens", str(max_tokens))
    page.check("#gen-ignore-eos")
    # The generate panel's event handler appends each token to #gen-output: make the third
    # append throw, as a bug in the page's handling of an event would.
    page.evaluate("""() => {
        const out = document.getElementById("gen-output");
        const append = out.append;
        let calls = 0;
        out.append = function (...nodes) {
            if (++calls === 3) throw new Error("injected failure on the third token");
            return append.apply(this, nodes);
        };
    }""")
    page.click("#gen-run")
    error = page.locator("#gen-error")
    error.wait_for(state="visible", timeout=60_000)
    assert "injected failure on the third token" in error.inner_text()
    wait_until(lambda: metric(server.url, "llm_requests_running") == 0, timeout=60,
               what="the running count to go back to 0")
    # Ended by the client going away, not by running to max_tokens.
    assert metric(server.url, "llm_request_aborts_total") == aborts + 1
    assert metric(server.url, "llm_generation_tokens_total") - generated < max_tokens
    assert page.locator("#gen-output .tok").count() == 2
    assert page.is_enabled("#gen-run") and not page.is_enabled("#gen-stop-button")
