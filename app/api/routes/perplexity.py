"""POST /v1/perplexity (ours; no anchor has it): how well a language model predicts a text.

Texts longer than a window are scored the way the `transformers` perplexity guide
("Perplexity of fixed-length models") does, with a sliding window: window k starts at
token k * `stride` and holds up to `window` tokens; it scores only the tokens that no
earlier window scored (its last `end - previous end` tokens), the tokens before them
being context. So the first window scores all its tokens but the first, and every token
but the text's first is scored exactly once; the perplexity is exp of the mean negative
log-likelihood over the scored tokens. Defaults: `window` = the model's context,
`stride` = half of it. `stride = window - 1` gives windows that share one token, which is
how `python -m app eval lm --context window-1` cuts its blocks: the two then agree
(tests/api/test_perplexity.py).

The windowing this endpoint used before (chunks of `stride` targets counted from the
second token, each with the `window` tokens ending at it) is not kept as an option: it
differs from the guide only in where the chunk boundaries fall, and one documented
algorithm is easier to compare against other tools than two.

Every window of every text is one SCORE request of a single admission: batched through
the engine like zero-shot labels, the logprobs the model's own (raw).
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request

from app.api import examples
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.prompt_input import PromptRules, parse_prompts
from app.api.responses import INFERENCE, documented
from app.api.schemas import (
    PerplexityRequest,
    PerplexityResponse,
    PerplexityResult,
    ScoredToken,
)
from app.api.serving import PREFILL_ONLY, collect, stream_usage, submit_all, token_text
from app.engine.request import RequestKind

router = APIRouter(tags=["evaluation"])


def windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of each window over `length` tokens, as the
    transformers guide walks them: starts step by `stride`, each window scores the tokens
    after the previous window's end (never its own first token, which nothing predicts)."""
    spans = []
    start, previous_end = 0, 0
    while True:
        end = min(start + window, length)
        first = max(previous_end, start + 1)
        if first < end:
            spans.append((start, end, first))
        if end >= length:
            return spans
        previous_end = end
        start += stride


@router.post("/v1/perplexity", response_model=PerplexityResponse,
             responses=documented(examples.PERPLEXITY, *INFERENCE),
             summary="Perplexity and mean negative log-likelihood of texts (sliding window)")
async def perplexity(body: PerplexityRequest, request: Request, state: StateDep
                     ) -> PerplexityResponse:
    model = pick_model(state, body.model, lm=True, purpose="perplexity")
    settings = state.settings
    window = body.window or model.max_model_len
    if window > model.max_model_len:
        raise BadRequest(f"window must be <= the model's context ({model.max_model_len})",
                         param="window")
    stride = body.stride or max(1, window // 2)
    if stride >= window:
        raise BadRequest(f"stride must be < window ({window}): each window needs a token of "
                         "context", param="stride")
    # Texts longer than the context are what windows are for: only --max-prompt-tokens
    # bounds them (and the queue, below); two tokens at least, to predict one.
    rules = PromptRules("text", fits_context=False, min_tokens=2)
    token_lists = (await parse_prompts(model, settings, body.text, rules)).ids
    prompts: list[list[int]] = []
    starts: list[int] = []
    owner: list[int] = []
    for i, ids in enumerate(token_lists):
        for start, end, first in windows(len(ids), window, stride):
            prompts.append(ids[start:end])
            starts.append(first - start)
            owner.append(i)
    scored = sum(len(p) for p in prompts)
    if scored > settings.max_waiting_tokens:
        raise BadRequest(f"these texts need {scored} tokens of windows; the server queues at "
                         f"most {settings.max_waiting_tokens} (--max-waiting-tokens): send "
                         "less text, or a larger stride", param="text")
    streams = submit_all(request, model, prompts, PREFILL_ONLY, RequestKind.SCORE,
                         score_from=starts, salt=body.cache_salt)
    outputs = await collect(request, streams)
    per_text: list[list[float]] = [[] for _ in token_lists]
    for i, out in zip(owner, outputs, strict=True):
        per_text[i].extend(out.score_logprobs or [])
    results = []
    for i, (ids, values) in enumerate(zip(token_lists, per_text, strict=True)):
        nll = -sum(values) / len(values)
        tokens = ([ScoredToken(token=token_text(model, t), token_id=t, logprob=lp)
                   for t, lp in zip(ids[1:], values, strict=True)] if body.logprobs else None)
        results.append(PerplexityResult(index=i, tokens=len(ids), scored_tokens=len(values),
                                        mean_nll=nll, perplexity=math.exp(nll),
                                        logprobs=tokens))
    total = sum(len(v) for v in per_text)
    mean = -sum(sum(v) for v in per_text) / total
    return PerplexityResponse(model=model.name, window=window, stride=stride, mean_nll=mean,
                              perplexity=math.exp(mean), results=results,
                              usage=stream_usage(streams))
