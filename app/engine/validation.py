"""Checks a request must pass before it is queued: can this model serve this kind of
request, do the prompt and parameters fit the model, the KV cache and the batch. Each
failure is an InvalidRequest (-> 400) raised before anything queues. Each kind of failure
is its own class, and none names a request field: which field of which endpoint is at
fault is the API's to say (app/api/errors.py maps these classes to fields).

Callers of the engine other than the API (benchmarks, tests) get the same guards, so a
prompt outside the vocabulary never reaches the model, whoever sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.errors import InvalidRequest
from app.engine.request import RequestKind
from app.modeling.config import ModelConfig, Task
from app.sampling_params import InvalidParams, SamplingParams


class WrongModelTask(InvalidRequest):
    """The model cannot serve this kind of request (a classifier asked to generate)."""


class InvalidPrompt(InvalidRequest):
    """The prompt's token ids: none at all, or some outside the vocabulary."""


class ContextOverflow(InvalidRequest):
    """The prompt and the tokens to generate do not fit the context or the KV cache."""

    def __init__(self, message: str, prompt_alone: bool) -> None:
        super().__init__(message)
        self.prompt_alone = prompt_alone  # the prompt overflows without generating


class InvalidSampling(InvalidRequest):
    """A sampling setting out of range; `setting` is the SamplingParams field."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class TooManySequences(InvalidRequest):
    """More parallel completions than the engine ever runs at once."""


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
        raise WrongModelTask(f"model {limits.model_name!r} is not {need} model")
    if not prompt_ids:
        raise InvalidPrompt("the prompt is empty (it encodes to no tokens)")
    if min(prompt_ids) < 0 or max(prompt_ids) >= cfg.vocab_size:
        raise InvalidPrompt(f"token ids must be in [0, {cfg.vocab_size})")
    # PREDICT may ask for the whole distribution; the API bounds it by its own limit.
    top_bound = cfg.vocab_size if kind is RequestKind.PREDICT else limits.max_top_logprobs
    try:
        params.validate(cfg.vocab_size, top_bound)
    except InvalidParams as exc:
        raise InvalidSampling(exc.message, setting=exc.param) from None
    generated = params.max_tokens if kind is RequestKind.GENERATE else 0
    total = len(prompt_ids) + generated
    if total > limits.max_model_len:
        raise ContextOverflow(
            f"the prompt ({len(prompt_ids)} tokens) and up to {generated} generated tokens "
            f"make {total}, which exceeds the model's context of {limits.max_model_len} "
            "tokens",
            prompt_alone=len(prompt_ids) >= limits.max_model_len)
    blocks = -(-total // limits.block_size) * limits.block_size
    if blocks > limits.kv_cache_tokens:
        prompt_blocks = -(-len(prompt_ids) // limits.block_size) * limits.block_size
        raise ContextOverflow(f"the request needs {total} tokens of KV cache; the cache "
                              f"holds {limits.kv_cache_tokens}",
                              prompt_alone=prompt_blocks > limits.kv_cache_tokens)
    if params.n > limits.max_num_seqs:
        raise TooManySequences(f"{params.n} completions of one prompt; the engine runs at "
                               f"most {limits.max_num_seqs} sequences at once")


def classified_tokens(prompt_ids: list[int], pad_token_id: int | None) -> list[int]:
    """The tokens a classification head reads: up to the last non-pad token, which is the
    one `transformers` pools (with causal attention, trailing pads change nothing before
    them, so dropping them is exact)."""
    end = len(prompt_ids)
    if pad_token_id is not None:
        while end > 1 and prompt_ids[end - 1] == pad_token_id:
            end -= 1
    return list(prompt_ids[:end])
