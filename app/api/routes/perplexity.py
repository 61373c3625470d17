"""POST /v1/perplexity (ours; no anchor has it): how well a language model predicts a text.

Texts longer than a window are scored the way the `transformers` perplexity guide does,
with a sliding window: the targets are cut into chunks of `stride` tokens, and each
chunk is scored by one forward pass over the `window` tokens that end with it (the
tokens before the chunk are context only). Every token but the first is scored exactly
once. Defaults: `window` = the model's context, `stride` = half of it (each scored token
sees at least half a window of context). `stride = window - 1` gives non-overlapping
windows that share one token, which is how `python -m app eval lm --context window-1`
cuts its blocks: the two then agree (tests/api/test_perplexity.py).

Every window of every text is one SCORE request of a single admission: batched through
the engine like zero-shot labels, the logprobs the model's own (raw).
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request

from app.api import examples
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.responses import INFERENCE, documented
from app.api.schemas import (
    PerplexityRequest,
    PerplexityResponse,
    PerplexityResult,
    ScoredToken,
)
from app.api.serving import (
    PREFILL_ONLY,
    as_list,
    check_inputs,
    collect,
    stream_usage,
    submit_all,
    token_text,
    tokenize,
)
from app.engine.request import RequestKind

router = APIRouter(tags=["evaluation"])


def windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of each window over `length` tokens: targets
    [1 + k*stride, ...) in chunks of `stride`, each with the `window` tokens ending there."""
    spans = []
    first = 1
    while first < length:
        end = min(first + stride, length)
        start = max(0, end - window)
        spans.append((start, end, first))
        first = end
    return spans


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
    raw = body.text
    if isinstance(raw, str) or isinstance(raw[0], str):
        texts = as_list(raw)
        check_inputs(settings, texts, "text")
        token_lists = [await tokenize(model, t) for t in texts]
    else:
        token_lists = [raw] if isinstance(raw[0], int) else raw
        check_inputs(settings, token_lists, "text")
        vocab = model.loaded.config.vocab_size
        if any(t >= vocab for ids in token_lists for t in ids):
            raise BadRequest(f"token ids must be < {vocab} (the vocabulary)", param="text")
    for i, ids in enumerate(token_lists):
        if len(ids) < 2:
            raise BadRequest(f"text {i} has {len(ids)} token(s): at least 2 are needed to "
                             "predict one", param="text")
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
