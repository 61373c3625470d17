"""The one chat pipeline behind every chat protocol (OpenAI chat completions today; the
Responses and Anthropic Messages APIs translate to it too): a protocol turns its request
into a ChatInput; `start_chat` plans it (template, tools, parsers: app/chat), encodes the
prompt under the server's limits, compiles its one constraint, counts it in the metrics
and submits it; ChatAnswers parses what comes back into protocol-neutral deltas and
messages (app/chat/types.py), which each protocol shapes its own way. Nothing here knows
a protocol's field names beyond the *_param names its errors should carry."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from app.api.errors import BadRequest
from app.api.prompt_input import PromptRules, encode_text
from app.api.schemas import SamplingFields, Usage
from app.api.serving import sampling_params, stream_usage, submit_all
from app.api.state import ServedModel
from app.api.structured_fields import compile_constraint
from app.chat.output import ChatOutputParser
from app.chat.plan import ChatOptions, ChatPlan, plan_chat
from app.chat.types import ChatDelta, ParsedMessage
from app.config import Settings
from app.engine.request import RequestKind
from app.engine.stream import RequestStream
from app.sampling_params import SamplingParams
from app.structured import Constraint, ConstraintSpec


@dataclass(frozen=True)
class ChatInput:
    """A chat request in the pipeline's terms, whatever protocol it came in."""

    # OpenAI-shaped messages with text content: role, content, and where present name,
    # tool_calls ([{"id", "type": "function", "function": {"name", "arguments"}}]),
    # tool_call_id, reasoning_content (what app/chat/templates.py renders)
    messages: Sequence[Mapping[str, Any]]
    options: ChatOptions
    sampling: SamplingFields  # temperature, top_p, stop, seed, n, ... (max_tokens below)
    structured: ConstraintSpec | None = None  # the answer's JSON Schema / regex / ...
    max_tokens: int | None = None  # None: until the context is full (OpenAI's chat)
    max_tokens_param: str = "max_tokens"  # the protocol's own field names, for its 400s
    prompt_param: str = "messages"
    logprobs: bool = False
    top_logprobs: int = 0
    cache_salt: str | None = None


def answer_schema(spec: ConstraintSpec | None) -> dict[str, Any] | None:
    """The JSON Schema of a JSON structured-output request (it may go behind reasoning)."""
    if spec is None or spec.kind not in ("json_schema", "json_object"):
        return None
    return json.loads(spec.value) if spec.kind == "json_schema" else {"type": "object"}


def plan_for(model: ServedModel, settings: Settings, chat: ChatInput) -> ChatPlan:
    """The chat plan of `chat` on `model` under the server's parser settings."""
    options = dataclasses.replace(chat.options, answer_schema=answer_schema(chat.structured))
    return plan_chat(model.tokenizer, chat.messages, options,
                     tool_parser=settings.tool_call_parser,
                     reasoning_parser=None if settings.reasoning_parser == "none"
                     else settings.reasoning_parser)


async def chat_constraint(model: ServedModel, settings: Settings, plan: ChatPlan,
                          structured: ConstraintSpec | None) -> Constraint | None:
    """The one constraint of a chat request: the plan's grammar (tool calls, a thinking
    budget, a response format behind reasoning) or the request's structured output."""
    if plan.answer_in_grammar:
        structured = None
    if plan.grammar is not None and structured is not None:
        raise BadRequest(f"{structured.param} cannot be combined with constrained tool calls "
                         "or a thinking budget", param=structured.param)
    if plan.grammar is not None:
        return await compile_constraint(model, settings,
                                        ConstraintSpec("grammar", plan.grammar, "tools"))
    if structured is not None:
        return await compile_constraint(model, settings, structured)
    return None


class ChatAnswers:
    """One answer parser per completion index (app/chat); protocol-neutral results."""

    def __init__(self, plan: ChatPlan, on_malformed: Callable[[int], None]) -> None:
        self.plan = plan
        self._parsers: dict[int, ChatOutputParser | None] = {}
        self._made_calls: set[int] = set()
        self._on_malformed = on_malformed

    @property
    def parsing(self) -> bool:
        """False: the model's text is the answer as it is (no tools, no reasoning)."""
        return self.plan.tool_parser is not None or self.plan.reasoning_parser is not None

    def _parser(self, index: int) -> ChatOutputParser | None:
        if index not in self._parsers:
            self._parsers[index] = self.plan.new_parser()
        return self._parsers[index]

    def _finished(self, parser: ChatOutputParser) -> None:
        if parser.malformed_calls:
            self._on_malformed(parser.malformed_calls)

    def stream(self, index: int, text: str, finished: bool) -> ChatDelta:
        """What completion `index`'s new text adds, once the parser has decided (text
        that may still turn out to be a call waits for the next piece)."""
        parser = self._parser(index)
        if parser is None:
            return ChatDelta(content=text)
        delta = parser.feed(text)
        if finished:
            delta = delta + parser.finish()
            self._finished(parser)
        if delta.tool_calls:
            self._made_calls.add(index)
        return delta

    def made_calls(self, index: int) -> bool:
        """Whether completion `index`'s stream has made a tool call so far."""
        return index in self._made_calls

    def whole(self, text: str) -> ParsedMessage:
        """A whole completion, parsed: the same message its stream adds up to."""
        parser = self.plan.new_parser()
        if parser is None:
            return ParsedMessage(content=text)
        message = parser.parse(text)
        self._finished(parser)
        return message


@dataclass
class ChatRun:
    """A submitted chat request: what the protocol layer reads its answer from."""

    model: ServedModel
    plan: ChatPlan
    prompt: list[int]
    params: SamplingParams
    streams: list[RequestStream]
    answers: ChatAnswers

    def usage(self) -> Usage:
        return stream_usage(self.streams)


async def encode_chat(model: ServedModel, settings: Settings, chat: ChatInput
                      ) -> tuple[ChatPlan, list[int]]:
    """The plan of `chat` and its prompt's token ids under the server's limits: what
    start_chat submits, and what a protocol's token count (Anthropic's count_tokens)
    reports, from the one render."""
    plan = plan_for(model, settings, chat)
    prompt = await encode_text(model, settings, plan.prompt,
                               PromptRules(chat.prompt_param, add_special_tokens=False))
    return plan, prompt


async def start_chat(request: Request, model: ServedModel, settings: Settings,
                     chat: ChatInput) -> ChatRun:
    """Plan, encode, constrain, count and submit `chat` (one admission: 429 refuses it
    whole). Raises BadRequest (and the chat path's errors, mapped in app/api/errors.py)
    before anything is queued."""
    plan, prompt = await encode_chat(model, settings, chat)
    constraint = await chat_constraint(model, settings, plan, chat.structured)
    # without max_tokens, a reply may run to the end of the context (OpenAI's chat),
    # bounded by the server's max_tokens_limit
    until_full = max(1, min(model.max_model_len - len(prompt), settings.max_tokens_limit))
    params = sampling_params(chat.sampling, settings, max_tokens=chat.max_tokens,
                             logprobs=chat.logprobs, top_logprobs=chat.top_logprobs,
                             default_max_tokens=until_full, model=model, prompts=[prompt],
                             max_tokens_param=chat.max_tokens_param,
                             prompt_param=chat.prompt_param)
    if not plan.skip_special_tokens:  # the family's call marker is a special token
        params = dataclasses.replace(params, skip_special_tokens=False)
    metrics = getattr(request.app.state, "metrics", None)
    if chat.options.tools and metrics is not None:
        metrics.tool_call_requests.inc(model.name, tool_choice=plan.tool_choice)

    def count_malformed(calls: int) -> None:
        if metrics is not None:
            metrics.tool_call_parse_failures.inc(model.name, calls)

    streams = submit_all(request, model, [prompt], params, RequestKind.GENERATE,
                         salt=chat.cache_salt, constraint=constraint)
    return ChatRun(model, plan, prompt, params, streams,
                   ChatAnswers(plan, on_malformed=count_malformed))

