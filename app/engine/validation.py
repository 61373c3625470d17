"""Checks a request must pass before it is queued: can this model serve this kind of
request, do the prompt and parameters fit the model, the KV cache and the batch. Each
failure is an InvalidRequest (-> 400) naming the field, raised before anything queues.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.errors import InvalidRequest
from app.engine.request import RequestKind
from app.modeling.config import ModelConfig, Task
from app.sampling_params import InvalidParams, SamplingParams


@dataclass(frozen=True)
class RequestLimits:
    model_name: str
    model: ModelConfig
    max_model_len: int
    kv_cache_tokens: int  # the whole cache: a request needing more can never run
    block_size: int
    max_top_logprobs: int
    max_num_seqs: int


def check_request(limits: RequestLimits, prompt_ids: list[int], params: SamplingParams,
                  kind: RequestKind) -> None:
    cfg = limits.model
    is_lm = cfg.task is Task.CAUSAL_LM
    if kind is not RequestKind.EMBED and (kind is RequestKind.CLASSIFY) == is_lm:
        need = "a classification" if kind is RequestKind.CLASSIFY else "a language"
        raise InvalidRequest(f"model {limits.model_name!r} is not {need} model", param="model")
    if not prompt_ids:
        raise InvalidRequest("the prompt is empty (it encodes to no tokens)", param="prompt")
    if min(prompt_ids) < 0 or max(prompt_ids) >= cfg.vocab_size:
        raise InvalidRequest(f"token ids must be in [0, {cfg.vocab_size})", param="prompt")
    # PREDICT may ask for the whole distribution; the API bounds it by its own limit.
    top_bound = cfg.vocab_size if kind is RequestKind.PREDICT else limits.max_top_logprobs
    try:
        params.validate(cfg.vocab_size, top_bound)
    except InvalidParams as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    generated = params.max_tokens if kind is RequestKind.GENERATE else 0
    total = len(prompt_ids) + generated
    if total > limits.max_model_len:
        param = "max_tokens" if len(prompt_ids) < limits.max_model_len else "prompt"
        raise InvalidRequest(
            f"prompt ({len(prompt_ids)} tokens) + max_tokens ({generated}) = {total} "
            f"exceeds the model's context of {limits.max_model_len} tokens", param=param)
    blocks = -(-total // limits.block_size) * limits.block_size
    if blocks > limits.kv_cache_tokens:
        raise InvalidRequest(f"request needs {total} tokens of KV cache; the cache holds "
                             f"{limits.kv_cache_tokens}", param="max_tokens")
    if params.n > limits.max_num_seqs:
        raise InvalidRequest(f"n must be <= {limits.max_num_seqs}", param="n")


def classified_tokens(prompt_ids: list[int], pad_token_id: int | None) -> list[int]:
    """The tokens a classification head reads: up to the last non-pad token, which is the
    one `transformers` pools (with causal attention, trailing pads change nothing before
    them, so dropping them is exact)."""
    end = len(prompt_ids)
    if pad_token_id is not None:
        while end > 1 and prompt_ids[end - 1] == pad_token_id:
            end -= 1
    return list(prompt_ids[:end])
