"""POST /v1/embeddings (OpenAI): one vector per input, from the model's final hidden states.

Pooling is the mean over the input's tokens (default) or the last token's state, then L2
normalisation. Inputs go through the engine as EMBED requests: batched with every other
request, counted in the metrics like them, and never served from the prefix cache (mean
pooling needs every position's state). Language models and classifiers both embed: the
vector is the hidden state before the LM head or the classification head.
"""

from __future__ import annotations

import base64
import math
import struct

from fastapi import APIRouter, Request

from app.api import examples
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.prompt_input import PromptRules, parse_prompts
from app.api.responses import INFERENCE, documented
from app.api.schemas import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from app.api.serving import PREFILL_ONLY, collect, stream_usage, submit_all
from app.engine.output import RequestOutput
from app.engine.request import RequestKind

router = APIRouter(tags=["openai"])


def pooled(out: RequestOutput, pooling: str) -> list[float]:
    """The output's vector, pooled and L2-normalised."""
    if out.embedding_sum is None or out.embedding_last is None:
        raise RuntimeError("the engine returned no hidden states for an embedding request")
    if pooling == "last":
        vector = out.embedding_last
    else:
        count = max(out.usage.prompt_tokens, 1)
        vector = [v / count for v in out.embedding_sum]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # OpenAI's format: little-endian float32, base64
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


@router.post("/v1/embeddings", response_model=EmbeddingResponse,
             responses=documented(examples.EMBEDDINGS, *INFERENCE),
             summary="OpenAI-compatible embeddings: mean (or last-token) pooled, L2-normalised")
async def embeddings(body: EmbeddingRequest, request: Request, state: StateDep
                     ) -> EmbeddingResponse:
    model = pick_model(state, body.model, lm=None, purpose="embeddings")
    hidden = model.loaded.config.hidden_size
    if body.dimensions is not None and body.dimensions != hidden:
        raise BadRequest(f"dimensions {body.dimensions} is not supported: model "
                         f"{model.name!r} embeds in {hidden} dimensions (no truncation)",
                         param="dimensions")
    prompts = (await parse_prompts(model, state.settings, body.input,
                                   PromptRules("input"))).ids
    streams = submit_all(request, model, prompts, PREFILL_ONLY, RequestKind.EMBED,
                         salt=body.cache_salt)
    outputs = await collect(request, streams)
    data = [Embedding(index=i, embedding=encoded(pooled(out, body.pooling),
                                                 body.encoding_format))
            for i, out in enumerate(outputs)]
    usage = stream_usage(streams)
    return EmbeddingResponse(data=data, model=model.name,
                             usage=EmbeddingUsage(prompt_tokens=usage.prompt_tokens,
                                                  total_tokens=usage.prompt_tokens))
