"""POST /v1/predict: the next-token distribution after each input text."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api import examples
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.prompt_input import PromptRules, parse_prompts
from app.api.responses import INFERENCE, documented
from app.api.schemas import PredictRequest, PredictResponse, PredictResult, TokenProb
from app.api.serving import collect, stream_usage, submit_all, token_text
from app.engine.request import RequestKind
from app.sampling_params import SamplingParams

router = APIRouter(tags=["inference"])


@router.post("/v1/predict", response_model=PredictResponse,
             responses=documented(examples.PREDICT, *INFERENCE),
             summary="Next-token probabilities (softmax over the vocabulary, and its argmax)")
async def predict(body: PredictRequest, request: Request, state: StateDep) -> PredictResponse:
    model = pick_model(state, body.model, lm=True, purpose="next-token prediction")
    settings = state.settings
    if body.top_k > settings.max_predict_top_k:
        raise BadRequest(f"top_k must be <= {settings.max_predict_top_k}", param="top_k")
    vocab = model.loaded.config.vocab_size
    if body.full_distribution and vocab > settings.max_full_distribution:
        raise BadRequest(f"full_distribution is limited to vocabularies of "
                         f"{settings.max_full_distribution} tokens (this one has {vocab})",
                         param="full_distribution")
    rules = PromptRules("text", add_special_tokens=body.add_special_tokens)
    prompts = (await parse_prompts(model, settings, body.text, rules)).ids
    k = vocab if body.full_distribution else min(body.top_k, vocab)
    params = SamplingParams(max_tokens=1, temperature=body.temperature, top_logprobs=k)
    streams = submit_all(request, model, prompts, params, RequestKind.PREDICT,
                         salt=body.cache_salt)
    outputs = await collect(request, streams)
    results = []
    for i, out in enumerate(outputs):
        top = out.distribution or []
        entries = [TokenProb(token=token_text(model, t), token_id=t, prob=p, logprob=lp)
                   for t, p, lp in top]
        distribution = None
        if body.full_distribution:
            distribution = [0.0] * vocab
            for t, p, _ in top:
                distribution[t] = p
        results.append(PredictResult(index=i, predictions=entries[:body.top_k],
                                     argmax=entries[0], prompt_tokens=out.prompt_tokens,
                                     distribution=distribution))
    return PredictResponse(model=model.name, predictions=results[0].predictions,
                           argmax=results[0].argmax, results=results,
                           usage=stream_usage(streams))
