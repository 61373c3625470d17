"""POST /v1/generate: text generation, whole or streamed as Server-Sent Events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api import examples
from app.api.deps import StateDep, pick_model
from app.api.prompt_input import PromptRules, parse_prompts
from app.api.responses import INFERENCE, documented
from app.api.schemas import GenerateRequest, GenerateResponse, GenerateResult
from app.api.serving import (
    collect,
    logprobs_out,
    prompt_logprobs_out,
    sampling_params,
    score_prompts,
    sse_stream,
    stream_usage,
    submit_all,
)
from app.api.structured_fields import request_constraint
from app.engine.output import RequestOutput
from app.engine.request import RequestKind

router = APIRouter(tags=["inference"])


@router.post("/v1/generate", response_model=GenerateResponse,
             responses=documented(examples.GENERATE, *INFERENCE,
                                  stream=examples.GENERATE_STREAM),
             summary="Generate text from a prompt (or several); SSE when stream=true")
async def generate(body: GenerateRequest, request: Request, state: StateDep) -> Any:
    model = pick_model(state, body.model, lm=True, purpose="text generation")
    settings = state.settings
    prompts = (await parse_prompts(model, settings, body.prompt, PromptRules("prompt"))).ids
    params = sampling_params(body, settings, logprobs=body.logprobs,
                             top_logprobs=body.top_logprobs, logprobs_mode=body.logprobs_mode,
                             model=model, prompts=prompts)
    constraint = await request_constraint(model, settings, body)
    # vLLM's prompt_logprobs: the prompts scored first (prefix-cached for the generation).
    prompt_lps = ([prompt_logprobs_out(model, out, body.prompt_logprobs) for out in
                   await score_prompts(request, model, settings, prompts, body.prompt_logprobs,
                                       body.cache_salt)]
                  if body.prompt_logprobs is not None else [None] * len(prompts))
    request_id = request.state.request_id
    streams = submit_all(request, model, prompts, params, RequestKind.GENERATE,
                         priority=body.priority, salt=body.cache_salt, constraint=constraint)
    if body.stream:

        started: set[tuple[int, int]] = set()

        def first_event(i: int, index: int) -> dict[str, Any]:
            """prompt_logprobs ride on each completion's first event."""
            if (i, index) in started or prompt_lps[i] is None:
                return {}
            started.add((i, index))
            return {"prompt_logprobs": [None if p is None else
                                        {k: v.model_dump() for k, v in p.items()}
                                        for p in prompt_lps[i] or []]}

        def on_output(i: int, out: RequestOutput) -> list[dict[str, Any]]:
            return [{"index": d.index, "prompt_index": i, "text": d.text,
                     "finish_reason": d.finish_reason,
                     **({"tokens": d.token_ids} if body.return_tokens else {}),
                     **({"logprobs": [e.model_dump() for e in logprobs_out(model, d.logprobs)
                                      or []]} if d.logprobs else {}),
                     **first_event(i, d.index)}
                    for d in out.completions]

        def final() -> list[dict[str, Any]]:
            return [{"id": request_id, "model": model.name,
                     "usage": stream_usage(streams).model_dump()}]

        return StreamingResponse(sse_stream(streams, on_output, final),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    outputs = await collect(request, streams)
    results = [GenerateResult(index=c.index, prompt_index=i, text=c.text,
                              finish_reason=c.finish_reason,
                              tokens=c.token_ids if body.return_tokens else None,
                              logprobs=logprobs_out(model, c.logprobs),
                              prompt_logprobs=prompt_lps[i])
               for i, out in enumerate(outputs) for c in out.completions]
    return GenerateResponse(id=request_id, model=model.name, text=results[0].text,
                            finish_reason=results[0].finish_reason, results=results,
                            usage=stream_usage(streams))
