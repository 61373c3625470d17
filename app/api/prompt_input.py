"""The one parser of prompt inputs: every route that takes a prompt (a text, a list of
texts, token ids, or a list of token-id lists) turns it into token ids here, under the
same limits and with the same messages:

- at most --max-inputs inputs per request;
- token ids inside the model's vocabulary;
- no input longer than --max-prompt-tokens (0: the model's context) nor, for the routes
  that run an input as one sequence, longer than the context;
- no input shorter than the route needs (one token; perplexity needs two).

The engine keeps its own guard on token ids (it protects the model, whoever calls it);
this module is what gives a client a 400 that names its own field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from app.api.errors import BadRequest
from app.api.state import ServedModel
from app.config import Settings

# What a request body may hold where a prompt goes (schemas.PromptInput and TextInput).
PromptValue = str | list[str] | list[int] | list[list[int]]

# Texts longer than this are tokenized in a worker thread, so the event loop (streams,
# health probes) never waits on a long tokenization.
TOKENIZE_INLINE_CHARS = 4096
# A token is at least one character, and rarely more than a few dozen: a text this many
# times longer than the token limit is refused before it is tokenized at all.
_CHARS_PER_TOKEN_BOUND = 64


@dataclass(frozen=True)
class PromptRules:
    """What one route accepts as its prompt field."""

    param: str  # the request field, named in every error
    fits_context: bool = True  # false where long inputs are cut into windows (perplexity)
    min_tokens: int = 1
    add_special_tokens: bool = True


@dataclass(frozen=True)
class Prompts:
    ids: list[list[int]]
    texts: list[str]  # each input's text: as given, or decoded from its token ids


def token_limit(model: ServedModel, settings: Settings, rules: PromptRules) -> int | None:
    """The most tokens one input may have; None for no limit but the queue's."""
    if not rules.fits_context:
        return settings.max_prompt_tokens or None
    return min(settings.max_prompt_tokens or model.max_model_len, model.max_model_len)


def _limit_name(model: ServedModel, settings: Settings, limit: int) -> str:
    if settings.max_prompt_tokens and settings.max_prompt_tokens <= model.max_model_len:
        return f"the server's --max-prompt-tokens of {limit}"
    return f"the {limit}-token context of {model.name}"


def check_count(settings: Settings, inputs: Sequence[object], param: str) -> None:
    if len(inputs) > settings.max_inputs:
        raise BadRequest(f"{param}: at most {settings.max_inputs} inputs per request "
                         f"(got {len(inputs)})", param=param)


def check_vocabulary(model: ServedModel, ids: Sequence[int], param: str) -> None:
    vocab = model.loaded.config.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise BadRequest(f"{param}: token ids must be in [0, {vocab}) (the vocabulary); got "
                         f"{bad[:5]}", param=param)


def check_ids(model: ServedModel, settings: Settings, ids: Sequence[int],
              rules: PromptRules) -> None:
    """Vocabulary, length limits and minimum length of one input's token ids."""
    check_vocabulary(model, ids, rules.param)
    limit = token_limit(model, settings, rules)
    if limit is not None and len(ids) > limit:
        raise BadRequest(f"{rules.param} is too long: {len(ids)} tokens, more than "
                         f"{_limit_name(model, settings, limit)}", param=rules.param)
    if len(ids) < rules.min_tokens:
        raise BadRequest(
            f"{rules.param} is empty" if not ids else
            f"{rules.param} has {len(ids)} token(s): at least {rules.min_tokens} are needed",
            param=rules.param)


async def tokenize(model: ServedModel, text: str, add_special_tokens: bool = True
                   ) -> list[int]:
    """Token ids of `text`, no limit applied; long texts are tokenized off the event loop."""
    if len(text) <= TOKENIZE_INLINE_CHARS:
        return model.tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return await asyncio.to_thread(model.tokenizer.encode, text, add_special_tokens)


async def encode_text(model: ServedModel, settings: Settings, text: str, rules: PromptRules
                      ) -> list[int]:
    """One text's token ids under the route's rules; refused before tokenizing when it is
    far longer than any limit allows."""
    limit = token_limit(model, settings, rules) or settings.max_waiting_tokens
    if len(text) > _CHARS_PER_TOKEN_BOUND * limit + 1024:
        raise BadRequest(f"{rules.param} is too long: {len(text)} characters for a limit "
                         f"of {limit} tokens", param=rules.param)
    ids = await tokenize(model, text, rules.add_special_tokens)
    check_ids(model, settings, ids, rules)
    return ids


async def parse_prompts(model: ServedModel, settings: Settings, value: PromptValue,
                        rules: PromptRules) -> Prompts:
    """Token ids and texts of a request's inputs: a text, texts, token ids, or lists of
    token ids (what lm-evaluation-harness and OpenAI's clients send)."""
    if isinstance(value, str):
        value = [value]
    if all(isinstance(v, str) for v in value):
        texts = [v for v in value if isinstance(v, str)]
        check_count(settings, texts, rules.param)
        return Prompts([await encode_text(model, settings, t, rules) for t in texts], texts)
    id_lists: list[list[int]] = (
        [[v for v in value if isinstance(v, int)]] if all(isinstance(v, int) for v in value)
        else [v for v in value if isinstance(v, list)])
    check_count(settings, id_lists, rules.param)
    for ids in id_lists:
        check_ids(model, settings, ids, rules)
    return Prompts(id_lists, [model.tokenizer.decode(ids, skip_special_tokens=False)
                              for ids in id_lists])
