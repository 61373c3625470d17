"""POST /v1/classify: labels for each text, from a classification head or zero-shot from a
language model: by each candidate label's likelihood (method "score"), or by the label
it generates when its output is constrained to the labels (method "generate")."""

from __future__ import annotations

import json
import math

from fastapi import APIRouter, Request

from app.api import examples
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.prompt_input import PromptRules, check_count, encode_text, parse_prompts
from app.api.responses import INFERENCE, documented
from app.api.schemas import ClassifyRequest, ClassifyResponse, ClassifyResult, LabelScore, Usage
from app.api.serving import PREFILL_ONLY, collect, stream_usage, submit_all
from app.api.state import ServedModel
from app.api.structured_fields import compile_constraint
from app.config import Settings
from app.engine.request import RequestKind
from app.sampling_params import IMPOSSIBLE_LOGPROB, SamplingParams
from app.structured import ConstraintSpec

router = APIRouter(tags=["inference"])



def _ranked(labels: list[str], scores: list[float], top_k: int | None) -> list[LabelScore]:
    ranked = sorted(zip(labels, scores, strict=True), key=lambda x: -x[1])
    return [LabelScore(label=label, score=score) for label, score in ranked[:top_k]]


async def _head(model: ServedModel, settings: Settings, texts: list[str], request: Request,
                top_k: int | None, salt: str | None) -> tuple[list[list[LabelScore]], Usage]:
    prompts = (await parse_prompts(model, settings, texts, PromptRules("text"))).ids
    streams = submit_all(request, model, prompts, PREFILL_ONLY, RequestKind.CLASSIFY,
                         salt=salt)
    outputs = await collect(request, streams)
    labels = list(model.loaded.config.id2label)
    ranked = [_ranked(labels, out.class_scores or [], top_k) for out in outputs]
    return ranked, stream_usage(streams)


async def _generated(model: ServedModel, settings: Settings, body: ClassifyRequest,
                     texts: list[str], request: Request
                     ) -> tuple[list[list[LabelScore]], Usage]:
    """method=generate: greedy generation constrained to " <label>" for one of the labels
    (the same continuation the score method measures). The written label scores its
    probability under the constrained distribution; the others 0."""
    labels = body.candidate_labels or []
    choices = [" " + label for label in labels]
    constraint = await compile_constraint(
        model, settings, ConstraintSpec("choice", json.dumps(choices), "candidate_labels"))
    # Constrained sampling may spell a label in more tokens than its usual tokenization
    # (" ", "f", "ood"); every token is at least one byte, plus one for EOS.
    longest = max(len(c.encode()) for c in choices)
    params = SamplingParams(max_tokens=longest + 1, temperature=0.0, logprobs=True)
    prompts = [await encode_text(model, settings, body.prompt_template.replace("{text}", t),
                                 PromptRules("text")) for t in texts]
    streams = submit_all(request, model, prompts, params, RequestKind.GENERATE,
                         salt=body.cache_salt, constraint=constraint)
    outputs = await collect(request, streams)
    results = []
    for out in outputs:
        done = out.completions[0]
        written = done.text.removeprefix(" ")
        logprob = sum(e.logprob for e in done.logprobs or [])
        scores = [math.exp(logprob) if label == written else 0.0 for label in labels]
        results.append(_ranked(labels, scores, body.top_k))
    return results, stream_usage(streams)


async def _zero_shot(model: ServedModel, settings: Settings, body: ClassifyRequest,
                     texts: list[str], request: Request) -> tuple[list[list[LabelScore]], Usage]:
    labels = body.candidate_labels or []
    if len(labels) > settings.max_candidate_labels:
        raise BadRequest(f"at most {settings.max_candidate_labels} candidate_labels",
                         param="candidate_labels")
    if "{text}" not in body.prompt_template:
        raise BadRequest("prompt_template must contain {text}", param="prompt_template")
    # Each (text, label) pair is one SCORE request: context tokens + " label" tokens.
    # The shared context's full blocks are computed once and then hit the prefix cache.
    label_ids = [model.tokenizer.encode(" " + label, add_special_tokens=False)
                 for label in labels]
    prompts: list[list[int]] = []
    starts: list[int | None] = []
    for text in texts:
        context = await encode_text(model, settings,
                                    body.prompt_template.replace("{text}", text),
                                    PromptRules("text"))
        for ids in label_ids:
            prompts.append(context + ids)
            starts.append(len(context))
    too_long = max(len(p) for p in prompts)
    if too_long > model.max_model_len:
        raise BadRequest(f"text plus label is {too_long} tokens; the model's context is "
                         f"{model.max_model_len}", param="text")
    # All texts x labels are one admission: the fan-out is one request to the queue.
    streams = submit_all(request, model, prompts, PREFILL_ONLY, RequestKind.SCORE,
                         score_from=starts, salt=body.cache_salt)
    outputs = await collect(request, streams)
    results = []
    for t in range(len(texts)):
        mean_logprobs = []
        for j in range(len(labels)):
            values = outputs[t * len(labels) + j].score_logprobs or [IMPOSSIBLE_LOGPROB]
            mean_logprobs.append(sum(values) / len(values))  # length-normalised
        if body.multi_label:
            # Each label on its own: its per-token (geometric mean) probability.
            scores = [math.exp(v) for v in mean_logprobs]
        else:
            top = max(mean_logprobs)
            weights = [math.exp(v - top) for v in mean_logprobs]
            scores = [w / sum(weights) for w in weights]
        results.append(_ranked(labels, scores, body.top_k))
    return results, stream_usage(streams)


@router.post("/v1/classify", response_model=ClassifyResponse,
             responses=documented(examples.CLASSIFY, *INFERENCE),
             summary="Classify texts with a classifier head, or zero-shot with candidate labels")
async def classify(body: ClassifyRequest, request: Request, state: StateDep
                   ) -> ClassifyResponse:
    zero_shot = body.candidate_labels is not None
    if zero_shot:
        model = pick_model(state, body.model, lm=True, purpose="zero-shot classification")
    else:
        model = pick_model(state, body.model, lm=False if body.model is None else None,
                           purpose="classification")
    texts = [body.text] if isinstance(body.text, str) else list(body.text)
    check_count(state.settings, texts, "text")
    if model.is_lm:
        if not zero_shot:
            raise BadRequest(f"model {model.name!r} is a language model: give candidate_labels "
                             "for zero-shot classification", param="candidate_labels")
        zero_shot_method = _generated if body.method == "generate" else _zero_shot
        ranked, usage = await zero_shot_method(model, state.settings, body, texts, request)
    else:
        if zero_shot:
            raise BadRequest("candidate_labels need a language model", param="candidate_labels")
        ranked, usage = await _head(model, state.settings, texts, request, body.top_k,
                                     body.cache_salt)
    results = [ClassifyResult(index=i, label=r[0].label, score=r[0].score, scores=r)
               for i, r in enumerate(ranked)]
    return ClassifyResponse(model=model.name, label=results[0].label, score=results[0].score,
                            scores=results[0].scores, results=results,
                            usage=usage)
