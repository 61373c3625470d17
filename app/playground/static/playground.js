// The playground page: each panel calls the server's public API, as any client would.
// No framework, no build step, no inline code (the page's CSP forbids it).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "llm-playground-api-key";
  /** Served models from /v1/info: {name, task, labels, max_model_len}. */
  let served = [];

  // ------------------------------------------------------------------ API calls

  class ApiError extends Error {
    constructor(status, message, param) {
      super(message);
      this.status = status;
      this.param = param;
    }
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  /** The server's error body ({"error": {"message", "type", "param", "code"}}) as an Error. */
  async function errorFrom(resp) {
    let message = resp.statusText || "request failed";
    let param = null;
    try {
      const body = await resp.json();
      if (body && body.error) {
        message = body.error.message;
        param = body.error.param;
      }
    } catch (_) { /* not JSON: keep the status line */ }
    return new ApiError(resp.status, message, param);
  }

  async function call(path, body, signal) {
    const init = body === undefined
      ? { headers: headers(), signal }
      : { method: "POST", headers: headers(), body: JSON.stringify(body), signal };
    const resp = await fetch(path, init);
    if (!resp.ok) throw await errorFrom(resp);
    return resp;
  }

  async function api(path, body, signal) {
    return (await call(path, body, signal)).json();
  }

  /** POST with stream=true and call onEvent for each Server-Sent Event's JSON; an error
   * event (sent once the stream has started) is thrown like an error response, and so is
   * a stream cut before its closing [DONE]. */
  async function stream(path, body, signal, onEvent) {
    const resp = await call(path, { ...body, stream: true }, signal);
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    /** One event's data lines, joined as the SSE format says; true at [DONE]. */
    const dispatch = (event) => {
      const data = event.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5)).join("\n");
      if (!data) return false;
      if (data.trim() === "[DONE]") return true;
      const parsed = JSON.parse(data);
      if (parsed.error) {
        throw new ApiError(parsed.error.code, parsed.error.message, parsed.error.param);
      }
      onEvent(parsed);
      return false;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        // Proxies may rewrite line endings: \r\n and \r end lines too.
        buffer += decoder.decode(value || new Uint8Array(), { stream: !done }).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (dispatch(event)) return;
        }
        if (done) {
          if (dispatch(buffer)) return;
          throw new Error("the stream ended before it was complete (connection cut?)");
        }
      }
    } catch (err) {
      // Whatever threw (a handler, a malformed event, an error event), nobody reads on:
      // cancelling the body closes the connection, so the server aborts the request
      // instead of generating to max_tokens. The original error is what the caller sees.
      reader.cancel(err).catch(() => {});
      throw err;
    }
  }

  // ------------------------------------------------------------------ helpers

  function showError(id, err) {
    const box = $(id);
    if (!err) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    let text = err.message || String(err);
    if (err instanceof ApiError) {
      text = `${text} (HTTP ${err.status}${err.param ? `, field: ${err.param}` : ""})`;
      if (err.status === 401) text += "\nEnter the server's API key at the top of the page.";
    }
    box.textContent = text;
    box.hidden = false;
  }

  const aborted = (err) => err && err.name === "AbortError";

  /** A token as a person can see it: spaces, newlines and tabs made visible. */
  const visible = (s) => s.replace(/ /g, "\u2423").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5");
  const pct = (p) => (p >= 0.001 ? (100 * p).toFixed(1) : (100 * p).toPrecision(2)) + "%";

  function numberField(id, parse = Number) {
    const raw = $(id).value.trim();
    return raw === "" ? undefined : parse(raw);
  }

  function selectedModel(id) {
    return $(id).value || undefined;
  }

  /** Horizontal bars, largest first: items are {label, value, key}; `top` is the key to
   * highlight; with onPick each bar is a button. Values go into data-value unrounded. */
  function drawBars(container, items, top, onPick) {
    container.replaceChildren();
    const max = Math.max(...items.map((i) => i.value), 1e-12);
    for (const item of items) {
      const row = document.createElement("div");
      row.setAttribute("role", "listitem");
      const bar = document.createElement(onPick ? "button" : "div");
      if (onPick) {
        bar.type = "button";
        bar.addEventListener("click", () => onPick(item));
      }
      bar.className = "bar" + (item.key === top ? " top" : "");
      bar.dataset.value = String(item.value);
      bar.dataset.label = item.label;
      bar.setAttribute("aria-label", `${JSON.stringify(item.label)}: ${pct(item.value)}` +
        (item.key === top ? " (most likely)" : ""));
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = visible(item.label);
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.setProperty("--w", String(item.value / max));
      track.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = pct(item.value);
      bar.append(label, track, value);
      row.append(bar);
      container.append(row);
    }
  }

  /** The request as a curl command, for the step from trying to writing a client. */
  function showCurl(id, path, body) {
    const quote = (s) => "'" + s.replace(/'/g, "'\\''") + "'";
    const parts = [`curl -s${body.stream ? "N" : ""} ${quote(location.origin + path)}`,
      "-H 'Content-Type: application/json'"];
    if (sessionStorage.getItem(KEY_STORAGE)) parts.push('-H "Authorization: Bearer $LLM_API_KEY"');
    parts.push(`-d ${quote(JSON.stringify(body))}`);
    $(id).textContent = parts.join(" \\\n  ");
  }

  // ------------------------------------------------------------------ tabs

  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));

  function selectTab(tab) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (tab.id === "tab-server") refreshServer();
  }

  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (to === undefined) return;
      e.preventDefault();
      const next = tabs[(to + tabs.length) % tabs.length];
      next.focus();
      selectTab(next);
    });
  });

  // ------------------------------------------------------------------ API key and models

  async function loadModels() {
    // /v1/info says which models are language models; without it (a proxy may block it)
    // every model is offered everywhere and the server says which one cannot answer.
    const [list, info] = await Promise.allSettled([api("/v1/models"), api("/v1/info")]);
    if (list.status === "rejected") {
      showError("global-error", list.reason);
      return;
    }
    const known = info.status === "fulfilled" ? info.value.models : [];
    const details = new Map(known.map((m) => [m.name, m]));
    // A LoRA adapter answers as its base model does (same task, context, labels).
    for (const m of known) {
      for (const a of m.adapters || []) details.set(a.name, { ...m, name: a.name, adapterOf: m.name });
    }
    served = list.value.data.map((m) => ({
      name: m.id, ...(details.get(m.id) || {}), ...(m.parent ? { adapterOf: m.parent } : {}),
    }));
    fillSelects();
    showError("global-error", null);
  }

  function fillSelects() {
    const lms = served.filter((m) => !m.task || m.task === "causal_lm");
    for (const select of document.querySelectorAll("select.lm-models")) {
      fill(select, lms, null);
    }
    const classifierFirst = served.find((m) => m.task && m.task !== "causal_lm");
    fill($("cls-model"), served, classifierFirst ? classifierFirst.name : null);
  }

  function fill(select, models, preferred) {
    const previous = select.value;
    select.replaceChildren();
    for (const m of models) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = (m.task === "causal_lm" || !m.task ? m.name
        : `${m.name} (classifier${m.labels ? `: ${m.labels.length} labels` : ""})`)
        + (m.adapterOf ? ` (LoRA adapter of ${m.adapterOf})` : "");
      select.append(option);
    }
    if (models.some((m) => m.name === previous)) select.value = previous;
    else if (preferred) select.value = preferred;
  }

  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    loadModels();
  });

  // ------------------------------------------------------------------ Generate

  let generating = null;
  /** Token entries of the current output, for the alternatives shown on hover/focus. */
  let generatedTokens = [];

  function tokenSpan(entry) {
    const span = document.createElement("span");
    span.className = "tok";
    // One tab stop for the whole output (the first token); arrow keys move between tokens.
    span.tabIndex = generatedTokens.length === 0 ? 0 : -1;
    span.textContent = entry.token;
    const p = Math.exp(entry.logprob);
    span.style.setProperty("--p", p.toFixed(4));
    span.dataset.index = String(generatedTokens.length);
    span.dataset.prob = String(p);
    span.title = `${JSON.stringify(entry.token)}: ${pct(p)}`;
    generatedTokens.push(entry);
    return span;
  }

  /** One streamed event's text: a span per token, shaded, when its tokens spell the text
   * (a stop string or a partial character can make them differ), else the text itself. */
  function appendGenerated(out, event) {
    const entries = event.logprobs || [];
    if (entries.length && entries.map((e) => e.token).join("") === event.text) {
      for (const entry of entries) out.append(tokenSpan(entry));
    } else if (event.text) {
      out.append(document.createTextNode(event.text));
    }
  }

  function showTokenInfo(entry) {
    const box = $("gen-token-info");
    box.replaceChildren();
    const title = document.createElement("p");
    const chosen = document.createElement("code");
    chosen.className = "t";
    chosen.textContent = visible(entry.token);
    title.append("Chosen ", chosen, ` with p = ${pct(Math.exp(entry.logprob))}`);
    const table = document.createElement("table");
    const caption = document.createElement("caption");
    caption.textContent = "Most likely at this position";
    table.append(caption);
    for (const alt of entry.top_logprobs || []) {
      const tr = document.createElement("tr");
      if (alt.token_id === entry.token_id) tr.className = "chosen";
      const token = document.createElement("td");
      const code = document.createElement("code");
      code.className = "t";
      code.textContent = visible(alt.token);
      token.append(code);
      const prob = document.createElement("td");
      prob.textContent = pct(Math.exp(alt.logprob));
      tr.append(token, prob);
      table.append(tr);
    }
    box.append(title, table);
  }

  $("gen-output").addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[e.key];
    const index = e.target.dataset && e.target.dataset.index;
    if (step === undefined || index === undefined) return;
    const next = $("gen-output").querySelector(`.tok[data-index="${Number(index) + step}"]`);
    if (!next) return;
    e.preventDefault();
    e.target.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  });

  for (const kind of ["mouseover", "focusin"]) {
    $("gen-output").addEventListener(kind, (e) => {
      const index = e.target.dataset && e.target.dataset.index;
      if (index !== undefined) showTokenInfo(generatedTokens[Number(index)]);
    });
  }

  function setGenerating(on) {
    $("gen-run").disabled = on;
    $("gen-stop-button").disabled = !on;
  }

  $("generate-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("gen-error", null);
    const withProbs = $("gen-logprobs").checked;
    const body = {
      model: selectedModel("gen-model"),
      prompt: $("gen-prompt").value,
      temperature: numberField("gen-temperature"),
      top_k: numberField("gen-top-k", parseInt),
      top_p: numberField("gen-top-p"),
      max_tokens: numberField("gen-max-tokens", parseInt),
      seed: numberField("gen-seed", parseInt),
      ignore_eos: $("gen-ignore-eos").checked,
      logprobs: withProbs,
      top_logprobs: withProbs ? 5 : 0,
    };
    const stop = $("gen-stop").value;
    // "|" separates stop strings; spaces around each are layout, "\n" is a newline.
    if (stop.trim()) {
      body.stop = stop.split("|").map((s) => s.trim().replace(/\\n/g, "\n")).filter((s) => s);
    }
    showCurl("gen-curl", "/v1/generate", { ...body, stream: true });
    const out = $("gen-output");
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = body.prompt;
    out.replaceChildren(prompt);
    generatedTokens = [];
    generating = new AbortController();
    setGenerating(true);
    $("gen-status").textContent = "generating\u2026";
    const started = performance.now();
    let tokens = 0;
    let finish = null;
    let usage = null;
    try {
      await stream("/v1/generate", body, generating.signal, (event) => {
        if (event.usage) {
          usage = event.usage;
          return;
        }
        appendGenerated(out, event);
        tokens += event.logprobs ? event.logprobs.length : (event.text ? 1 : 0);
        if (event.finish_reason) finish = event.finish_reason;
      });
      const count = usage ? usage.completion_tokens : tokens;
      const seconds = (performance.now() - started) / 1000;
      $("gen-status").textContent =
        `${count} tokens in ${seconds.toFixed(2)} s (${(count / seconds).toFixed(1)} tokens/s); finish: ${finish}`;
    } catch (err) {
      if (aborted(err)) {
        $("gen-status").textContent = `stopped after ${tokens} tokens`;
      } else {
        $("gen-status").textContent = "";
        showError("gen-error", err);
      }
    } finally {
      generating = null;
      setGenerating(false);
    }
  });

  $("gen-stop-button").addEventListener("click", () => generating && generating.abort());

  // ------------------------------------------------------------------ Chat

  /** The conversation so far: {role, content}. */
  let conversation = [];
  let chatting = null;
  /** Bumped by Clear and by each send: a reply that is no longer the current turn (the
   * conversation was cleared meanwhile) changes nothing when it ends. */
  let chatTurn = 0;

  /** A message bubble; its content element is returned (the bubble is its parent). */
  function addMessage(role, content) {
    const li = document.createElement("li");
    li.className = role;
    const who = document.createElement("span");
    who.className = "role";
    who.textContent = role;
    const text = document.createElement("span");
    text.className = "content";
    text.textContent = content;
    li.append(who, text);
    $("chat-messages").append(li);
    return text;
  }

  function chatMessages() {
    const system = $("chat-system").value.trim();
    return system ? [{ role: "system", content: system }, ...conversation] : [...conversation];
  }

  /** The tools box's fields for a chat request ({} when it is empty); throws on text
   * that is not a JSON array. */
  function chatTools() {
    const given = $("chat-tools").value.trim();
    if (!given) return {};
    let tools;
    try {
      tools = JSON.parse(given);
    } catch (err) {
      throw new Error(`Tools: not valid JSON (${err.message})`);
    }
    if (!Array.isArray(tools)) throw new Error("Tools: give a JSON array of tools");
    const fields = { tools, tool_choice: $("chat-tool-choice").value };
    return $("chat-parallel").checked ? fields : { ...fields, parallel_tool_calls: false };
  }

  /** The prompt after the model's chat template, as the server renders it (the tools
   * too, as chat renders them: /v1/tokenize takes them). */
  async function showRendered(model, messages, tools, turn) {
    let shown;
    try {
      const offered = tools.tool_choice === "none" ? {} : { tools: tools.tools };
      const { tokens } = await api("/v1/tokenize", { model, messages, ...offered });
      const { text } = await api("/v1/detokenize", { model, tokens, skip_special_tokens: false });
      shown = text;
    } catch (err) {
      shown = `(could not render: ${err.message})`;
    }
    if (turn === chatTurn) $("chat-rendered").textContent = shown;
  }

  function setChatting(on) {
    $("chat-send").disabled = on;
    $("chat-stop").disabled = !on;
  }

  $("chat-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const content = $("chat-input").value;
    if (!content.trim()) return;
    const turn = ++chatTurn;
    showError("chat-error", null);
    let tools;
    try {
      tools = chatTools();
    } catch (err) {
      showError("chat-error", err); // the message stays in its box
      return;
    }
    const model = selectedModel("chat-model");
    conversation.push({ role: "user", content });
    const asked = addMessage("user", content).parentElement;
    $("chat-input").value = "";
    const messages = chatMessages();
    showRendered(model, messages, tools, turn);
    const reply = addMessage("assistant", "");
    let text = "";
    /** Take the turn back: no reply, the message returns to the box (nothing is lost). */
    const undo = () => {
      conversation.pop();
      asked.remove();
      reply.parentElement.remove();
      $("chat-input").value = content;
    };
    const controller = new AbortController();
    chatting = controller;
    setChatting(true);
    $("chat-status").textContent = "replying\u2026";
    try {
      const body = {
        model, messages, temperature: numberField("chat-temperature"),
        max_tokens: numberField("chat-max-tokens", parseInt), ...tools,
      };
      showCurl("chat-curl", "/v1/chat/completions", { ...body, stream: true });
      // With a reasoning parser the reply's reasoning comes apart (reasoning_content), and
      // tool calls as delta.tool_calls: shown before and after the answer's text.
      let reasoning = "";
      const calls = [];
      const show = () => {
        const called = calls.map((c) => `\u2192 ${c.function.name}(${c.function.arguments})`);
        reply.textContent = (reasoning ? `(thinking) ${reasoning.trim()}\n\n` : "")
          + [text, ...called].filter(Boolean).join("\n");
      };
      await stream("/v1/chat/completions", body, controller.signal, (event) => {
        for (const choice of event.choices || []) {
          const delta = choice.delta || {};
          if (delta.reasoning_content) reasoning += delta.reasoning_content;
          if (delta.content) text += delta.content;
          for (const piece of delta.tool_calls || []) {
            if (piece.id) calls[piece.index] = { id: piece.id, type: "function",
                                                 function: { ...piece.function } };
            else calls[piece.index].function.arguments += piece.function.arguments;
          }
          if (delta.reasoning_content || delta.content || delta.tool_calls) show();
          if (choice.finish_reason) $("chat-status").textContent = `finish: ${choice.finish_reason}`;
        }
      });
      if (turn === chatTurn) {
        conversation.push(calls.length ? { role: "assistant", content: text || null,
                                           tool_calls: calls }
                                       : { role: "assistant", content: text });
      }
    } catch (err) {
      if (turn !== chatTurn) return; // cleared meanwhile: nothing of this turn is left
      if (aborted(err) && text) {
        $("chat-status").textContent = "stopped";
        conversation.push({ role: "assistant", content: text });
      } else if (aborted(err)) {
        $("chat-status").textContent = "stopped before a reply";
        undo();
      } else {
        $("chat-status").textContent = "";
        undo();
        showError("chat-error", err);
      }
    } finally {
      if (chatting === controller) {
        chatting = null;
        setChatting(false);
      }
    }
  });

  $("chat-stop").addEventListener("click", () => chatting && chatting.abort());
  $("chat-clear").addEventListener("click", () => {
    chatTurn++;
    if (chatting) chatting.abort();
    chatting = null;
    setChatting(false);
    conversation = [];
    $("chat-messages").replaceChildren();
    $("chat-rendered").textContent = "";
    $("chat-status").textContent = "";
    showError("chat-error", null);
  });

  // ------------------------------------------------------------------ Next token

  let predictRun = 0;

  async function predictNext() {
    const run = ++predictRun;
    showError("next-error", null);
    $("next-status").textContent = "predicting\u2026";
    try {
      const body = {
        model: selectedModel("next-model"),
        text: $("next-prompt").value,
        top_k: numberField("next-top-k", parseInt),
        temperature: Number($("next-temperature").value),
      };
      showCurl("next-curl", "/v1/predict", body);
      const result = await api("/v1/predict", body);
      if (run !== predictRun) return; // a newer request (slider moved) owns the chart
      drawBars($("next-chart"), result.predictions.map((p) => ({
        label: p.token, value: p.prob, key: p.token_id,
      })), result.argmax.token_id, (item) => {
        $("next-prompt").value += item.label;
        predictNext();
      });
      $("next-status").textContent =
        `${result.usage.prompt_tokens} prompt tokens; argmax ${JSON.stringify(result.argmax.token)} ` +
        `with p = ${pct(result.argmax.prob)}`;
    } catch (err) {
      if (run !== predictRun) return;
      $("next-status").textContent = "";
      showError("next-error", err);
    }
  }

  $("next-form").addEventListener("submit", (e) => {
    e.preventDefault();
    predictNext();
  });

  let sliderTimer = null;
  $("next-temperature").addEventListener("input", () => {
    $("next-temperature-value").textContent = Number($("next-temperature").value).toFixed(2);
    clearTimeout(sliderTimer);
    sliderTimer = setTimeout(() => {
      if ($("next-chart").childElementCount) predictNext();
    }, 120);
  });

  // ------------------------------------------------------------------ Classify

  let classifyRun = 0;

  $("classify-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const run = ++classifyRun;
    showError("cls-error", null);
    const body = { model: selectedModel("cls-model"), text: $("cls-text").value };
    const labels = $("cls-labels").value.split(",").map((s) => s.trim()).filter((s) => s);
    if (labels.length) {
      body.candidate_labels = labels;
      body.multi_label = $("cls-multi").checked;
    }
    showCurl("cls-curl", "/v1/classify", body);
    $("cls-status").textContent = "classifying\u2026";
    try {
      const result = await api("/v1/classify", body);
      if (run !== classifyRun) return; // a newer request owns the chart
      drawBars($("cls-chart"), result.scores.map((s) => ({ label: s.label, value: s.score, key: s.label })),
        result.label, null);
      $("cls-status").textContent = `${result.model}: ${result.label} (${pct(result.score)})`;
    } catch (err) {
      if (run !== classifyRun) return;
      $("cls-status").textContent = "";
      $("cls-chart").replaceChildren();
      showError("cls-error", err);
    }
  });

  // ------------------------------------------------------------------ Server

  /** The last reading of the token counters, to turn them into rates. */
  let lastCounters = null;

  /** Per-model totals of the two token counters in a Prometheus text exposition. */
  function tokenCounters(text) {
    const totals = { generation: new Map(), prompt: new Map() };
    for (const line of text.split("\n")) {
      const match = /^llm_(generation|prompt)_tokens_total\{([^}]*)\}\s+(\S+)/.exec(line);
      if (!match) continue;
      const model = /model="([^"]*)"/.exec(match[2]);
      if (model) totals[match[1]].set(model[1], Number(match[3]));
    }
    return totals;
  }

  function rate(now, kind, model) {
    if (!lastCounters || !now) return "\u2013";
    const seconds = (now.time - lastCounters.time) / 1000;
    const delta = (now[kind].get(model) || 0) - (lastCounters[kind].get(model) || 0);
    return seconds > 0 ? (delta / seconds).toFixed(1) : "\u2013";
  }

  function cell(text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    return td;
  }

  let refreshing = false;

  async function refreshServer() {
    if (refreshing) return; // one reading at a time, or the rates mix two intervals
    refreshing = true;
    try {
      const info = await api("/v1/info");
      let counters = null;
      try {
        counters = { time: performance.now(), ...tokenCounters(await (await call("/metrics")).text()) };
      } catch (_) { /* /metrics may be off-limits to this key: rates then stay blank */ }
      // each LoRA adapter on a row of its own below its model: requests in flight, and
      // whether its weights sit in a slot now
      const adapterRows = (m) => (m.adapters || []).map((a) => {
        const tr = document.createElement("tr");
        tr.dataset.model = a.name;
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = `\u21b3 ${a.name}`;
        tr.append(th, cell(`LoRA adapter (rank ${a.rank})`), cell("\u2013", true),
          cell("\u2013", true), cell(String(a.requests), true), cell("\u2013", true),
          cell(a.resident ? "resident" : "not resident"), cell(a.path));
        return tr;
      });
      const modelRow = (m) => {
        const tr = document.createElement("tr");
        tr.dataset.model = m.name;
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = m.name;
        const kv = m.kv_cache_blocks ? `${m.kv_blocks_used} / ${m.kv_cache_blocks} blocks ` +
          `(${pct(m.kv_blocks_used / m.kv_cache_blocks)})` : "\u2013";
        const running = cell(String(m.running_requests), true);
        running.className += " running";
        tr.append(th, cell(m.task === "causal_lm" ? "language model" : "classifier"),
          cell(rate(counters, "generation", m.name), true), cell(rate(counters, "prompt", m.name), true),
          running, cell(String(m.waiting_requests), true), cell(kv),
          cell(`${m.dtype} on ${m.device}` + (m.quantization === "none" ? "" : `, ${m.quantization}`)));
        return tr;
      };
      const rows = info.models.flatMap((m) => [modelRow(m), ...adapterRows(m)]);
      $("srv-rows").replaceChildren(...rows);
      if (counters) lastCounters = counters;
      $("srv-version").textContent = `version ${info.version}, ${info.phase}`;
      $("srv-status").textContent = `updated ${new Date().toLocaleTimeString()}`;
      showError("srv-error", null);
    } catch (err) {
      showError("srv-error", err);
    } finally {
      refreshing = false;
    }
  }

  $("srv-refresh").addEventListener("click", refreshServer);
  setInterval(() => {
    if ($("srv-auto").checked && !$("panel-server").hidden && !document.hidden) refreshServer();
  }, 3000);

  loadModels();
})();
