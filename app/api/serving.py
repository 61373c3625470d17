"""Serving logic shared by the routes: limits, request -> engine parameters, submitting
several inputs at once, waiting while watching for a client that goes away, and
Server-Sent Events. Routes stay thin: parse, call these, shape the response."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import Request

from app.api.errors import BadRequest, error_body, status_of
from app.api.router_fields import include_stop, refuse_unsupported_extensions
from app.api.schemas import PromptLogprob, SamplingFields, TokenLogprobOut, TopLogprob, Usage
from app.api.state import ServedModel
from app.config import Settings
from app.engine.errors import RequestCancelled
from app.engine.output import RequestOutput, merge_outputs
from app.engine.output import Usage as EngineUsage
from app.engine.request import RequestKind
from app.engine.stream import RequestStream
from app.sampling_params import LogprobsMode, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from app.structured import Constraint

log = logging.getLogger("app.api")

# A logit_bias key is a token id written in plain ASCII base 10 ("²" and "--5" are not).
_TOKEN_ID_KEY = re.compile(r"[0-9]{1,9}")


# Prefill-only requests (classify, score, embed) sample nothing; one token is their budget.
PREFILL_ONLY = SamplingParams(max_tokens=1)


def check_max_tokens(wanted: int, settings: Settings, model: ServedModel | None,
                     prompts: Sequence[list[int]], *, default: bool,
                     param: str = "max_tokens", prompt_param: str = "prompt") -> None:
    """One 400 with the real bound on max_tokens for these prompts on this model: the
    server's --max-tokens-limit and the room the longest prompt leaves in the context,
    whichever is smaller (so a client never fixes one limit only to meet the other)."""
    limit = settings.max_tokens_limit
    what = f"{param} is {wanted}" + (" (the server's default, --default-max-tokens)"
                                     if default else "")
    if model is None or not prompts:
        if wanted > limit:
            raise BadRequest(f"{what}, but the server allows at most {limit} "
                             f"(--max-tokens-limit)", param=param)
        return
    longest = max(len(p) for p in prompts)
    context = model.max_model_len
    room = context - longest
    if wanted <= min(room, limit):
        return
    tokens = f"{longest} token{'s' if longest != 1 else ''}"
    prompt = (f"this prompt of {tokens}" if len(prompts) == 1
              else f"the longest prompt, of {tokens},")
    where = f"the {context}-token context of {model.name}"
    if room < 1:
        raise BadRequest(f"{prompt} fills {where}: no room is left to generate; shorten "
                         "it", param=prompt_param)
    if room <= limit:
        raise BadRequest(f"{what}, but {prompt} leaves room for at most {room} in {where} "
                         f"(server limit: --max-tokens-limit {limit})", param=param)
    raise BadRequest(f"{what}, but the server allows at most {limit} (--max-tokens-limit; "
                     f"{prompt} would leave room for {room} in {where})", param=param)


def sampling_params(
    req: SamplingFields,
    settings: Settings,
    *,
    max_tokens: int | None = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
    logprobs_mode: str = "processed",
    default_max_tokens: int | None = None,
    model: ServedModel | None = None,
    prompts: Sequence[list[int]] = (),
    max_tokens_param: str = "max_tokens",
    prompt_param: str = "prompt",
    top_logprobs_param: str = "top_logprobs",
) -> SamplingParams:
    """Request fields -> engine SamplingParams, enforcing the server's limits (400). With
    the model and the prompts it will generate from, max_tokens is checked against the
    context as well (check_max_tokens). The *_param names are the route's own fields
    (completions call top_logprobs `logprobs`), so a 400 names what the client sent."""
    given = max_tokens or req.max_tokens
    wanted = given or default_max_tokens or settings.default_max_tokens
    check_max_tokens(wanted, settings, model, prompts,
                     default=given is None and default_max_tokens is None,
                     param=max_tokens_param, prompt_param=prompt_param)
    if req.n > settings.max_n:
        raise BadRequest(f"n must be <= {settings.max_n}", param="n")
    if top_logprobs > settings.max_top_logprobs:
        raise BadRequest(f"{top_logprobs_param} must be <= {settings.max_top_logprobs}",
                         param=top_logprobs_param)
    bias: list[tuple[int, float]] = []
    for key, value in (req.logit_bias or {}).items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise BadRequest(f"logit_bias keys must be token ids in plain decimal digits "
                             f"(like \"50256\"); got {key!r}", param="logit_bias")
        bias.append((int(key), float(value)))
    refuse_unsupported_extensions(req)
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if any(not s for s in stop):
        raise BadRequest("stop strings must not be empty", param="stop")
    return SamplingParams(
        max_tokens=wanted, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
        min_p=req.min_p, repetition_penalty=req.repetition_penalty,
        presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
        logit_bias=tuple(bias), seed=req.seed, stop=stop,
        stop_token_ids=tuple(req.stop_token_ids or ()), min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos, n=req.n, logprobs=logprobs or top_logprobs > 0,
        top_logprobs=top_logprobs, logprobs_mode=LogprobsMode(logprobs_mode),
        include_stop_str_in_output=include_stop(req),
        skip_special_tokens=req.skip_special_tokens is not False,
        speculate=req.speculative,
    )


def cache_salt(request: Request, salt: str | None) -> str | None:
    """The prefix-cache namespace of a request: its own `cache_salt`, and with
    --cache-salt-api-key the caller's key (hashed), so callers never share cached blocks
    unless they share both."""
    key_id: str | None = getattr(request.state, "api_key_id", None)
    if key_id is None:
        return salt
    return f"{key_id}:{salt or ''}"


def submit_all(request: Request, model: ServedModel, prompts: Sequence[list[int]],
               params: SamplingParams, kind: RequestKind, *, priority: int = 0,
               score_from: Sequence[int | None] | None = None,
               salt: str | None = None, constraint: Constraint | None = None
               ) -> list[RequestStream]:
    """Submit every input as one admission, or none (e.g. 429), with the LoRA adapter the
    request named (an adapter's view of its model). The streams are recorded on the
    request for its log line."""
    streams = model.engine.submit_batch(prompts, params, kind, priority=priority,
                                        score_from=score_from,
                                        cache_salt=cache_salt(request, salt),
                                        constraint=constraint, adapter=model.adapter)
    request.state.streams = streams
    if model.adapter is not None:
        request.state.adapter = model.adapter  # for the request's log line
    return streams


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect(request: Request, streams: list[RequestStream]) -> list[RequestOutput]:
    """Wait for every stream to finish; if the client disconnects first, abort them all
    (their KV blocks return before the next engine step)."""

    async def gather() -> list[RequestOutput]:
        results = await asyncio.gather(*(s.collect() for s in streams))
        return [merge_outputs(r) for r in results]

    work = asyncio.ensure_future(gather())
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        raise RequestCancelled("client disconnected")
    finally:
        watcher.cancel()
        work.cancel()
        # Whatever ended the wait (a disconnect, or one input failing), nothing is left
        # running for an answer nobody will get. A no-op for finished streams.
        for s in streams:
            s.abort()
        await asyncio.gather(work, return_exceptions=True)


# Characters that some line readers (str.splitlines, hence several HTTP clients) treat as
# line breaks; JSON-escaped, so one SSE event is always one line on every client.
_LINE_BREAKERS = {c: f"\\u{c:04x}" for c in (0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x85, 0x2028,
                                               0x2029)}


# Streamed responses: no caching, and no buffering by a proxy in front (nginx honours this).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any] | str, event: str | None = None) -> str:
    """One SSE event of strict JSON (NaN or infinity raise instead of leaking out), named
    `event` where the protocol names its events (Responses, Anthropic Messages)."""
    if isinstance(data, str):
        payload = data
    else:
        payload = json.dumps(data, ensure_ascii=False, allow_nan=False).translate(
            _LINE_BREAKERS)
    name = f"event: {event}\n" if event is not None else ""
    return f"{name}data: {payload}\n\n"


async def merged_stream(streams: list[RequestStream]
                        ) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Outputs of several streams as they come: (input index, output). Reads one output
    per stream at a time and only when the consumer asks for more, so a slow reader
    leaves outputs merging in each request's collector instead of piling up here."""
    iterators = [s.__aiter__() for s in streams]
    pending: dict[asyncio.Future[RequestOutput], int] = {
        asyncio.ensure_future(anext(it)): i for i, it in enumerate(iterators)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: pending[f]):
                i = pending.pop(future)
                try:
                    out = future.result()
                except StopAsyncIteration:
                    continue
                yield i, out
                pending[asyncio.ensure_future(anext(iterators[i]))] = i
    finally:
        for future in pending:
            future.cancel()
        for s in streams:
            s.abort()  # no-op for finished requests


async def sse_stream(
    streams: list[RequestStream],
    on_output: Callable[[int, RequestOutput], list[dict[str, Any]]],
    final: Callable[[], list[dict[str, Any]]],
) -> AsyncIterator[str]:
    """SSE body: one event per engine output, the final events, then [DONE]. An error
    after the stream started becomes an error event (the status line is already sent)."""
    try:
        async for i, out in merged_stream(streams):
            for event in on_output(i, out):
                yield sse(event)
        for event in final():
            yield sse(event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status, type_, param, _ = status_of(exc)
        log.warning("stream failed: %s", exc)
        yield sse(error_body(status, type_, str(exc) if status < 500 or hasattr(exc, "message")
                             else "internal server error", param))
    yield sse("[DONE]")


async def score_prompts(request: Request, model: ServedModel, settings: Settings,
                        prompts: Sequence[list[int]], top: int, salt: str | None
                        ) -> list[RequestOutput]:
    """Each prompt token's logprob (the first excepted), rank and the `top` most likely
    alternatives: SCORE requests, batched and prefix-cached like zero-shot labels."""
    if top > settings.max_top_logprobs:
        raise BadRequest(f"logprobs / prompt_logprobs must be <= {settings.max_top_logprobs}",
                         param="prompt_logprobs")
    # At least one alternative is computed, so the prompt token's rank is always known.
    params = replace(PREFILL_ONLY, top_logprobs=max(top, 1))
    streams = submit_all(request, model, prompts, params, RequestKind.SCORE,
                         score_from=[1] * len(prompts), salt=salt)
    return list(await collect(request, streams))


def prompt_logprobs_out(model: ServedModel, scored: RequestOutput, top: int
                        ) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's prompt_logprobs: None for the first token, then {token id: logprob, rank,
    decoded token} for the prompt's own token and the `top` most likely."""
    out: list[dict[str, PromptLogprob] | None] = [None]
    for entries in scored.score_top or []:
        out.append({str(t): PromptLogprob(logprob=lp, rank=r, decoded_token=token_text(model, t))
                    for t, lp, r in entries[:top + 1]})
    return out


def token_text(model: ServedModel, token_id: int) -> str:
    return model.tokenizer.decode([token_id], skip_special_tokens=False)


def logprobs_out(model: ServedModel, entries: list[TokenLogprob] | None
                 ) -> list[TokenLogprobOut] | None:
    if entries is None:
        return None
    return [TokenLogprobOut(
        token=token_text(model, e.token_id), token_id=e.token_id, logprob=e.logprob,
        top_logprobs=[TopLogprob(token=token_text(model, t), token_id=t, logprob=lp)
                      for t, lp in e.top]) for e in entries]


def stream_usage(streams: Sequence[RequestStream]) -> Usage:
    """Token counts of finished streams, from their final outputs."""
    total = EngineUsage(0)
    for s in streams:
        if s.final is not None:
            total += s.final.usage
    return usage_out(total)


def usage_out(usage: EngineUsage) -> Usage:
    return Usage.of(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
