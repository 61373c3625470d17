"""Everything a chat request needs before it is submitted, from any protocol: the prompt
(template with tools and template kwargs), the parsers for its answer, the constraint that
makes calls valid by construction (and caps the reasoning), and how to decode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.chat.errors import AnswerFormatConflict, BudgetUnsupported, ContinuationError
from app.chat.grammar import ReasoningSpec, added_token_ids, chat_grammar, json_answer
from app.chat.output import ChatOutputParser
from app.chat.parsing import ToolCallParser
from app.chat.reasoning import ThinkReasoningParser, starts_in_reasoning
from app.chat.registry import AUTO, resolve_reasoning_parser, resolve_tool_parser
from app.chat.templates import render_chat
from app.chat.tool_constraints import chosen_tools, tool_call_rules
from app.tokenizer import Tokenizer


@dataclass(frozen=True)
class ChatOptions:
    """The protocol-neutral chat fields of a request."""

    tools: Sequence[Mapping[str, Any]] = ()
    tool_choice: Any = None  # none | auto | required | {"type": "function", ...}; None: auto
    parallel_tool_calls: bool = True
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    reasoning_budget: int | None = None  # most reasoning tokens
    # A JSON Schema the answer must follow (response_format). With a reasoning parser it
    # joins this plan's grammar, after </think>; without, the caller applies it itself.
    answer_schema: Mapping[str, Any] | None = None
    add_generation_prompt: bool = True  # the assistant's opening after the conversation
    continue_final_message: bool = False  # the last (assistant) message is left open
    separate_reasoning: bool = True  # False: reasoning stays in the answer's text


@dataclass(frozen=True)
class ChatPlan:
    prompt: str
    grammar: str | None  # an app/structured.py `grammar` constraint, or None
    skip_special_tokens: bool
    tool_parser: type[ToolCallParser] | None  # None: tools are not offered
    reasoning_parser: type[ThinkReasoningParser] | None
    prompt_opened_reasoning: bool
    tool_choice: str  # none | auto | required (a named function is "required")
    answer_in_grammar: bool = False  # options.answer_schema is part of `grammar`

    def new_parser(self) -> ChatOutputParser | None:
        """A parser for one answer (one per completion), or None: the text is the answer."""
        if self.tool_parser is None and self.reasoning_parser is None:
            return None
        return ChatOutputParser(
            self.tool_parser() if self.tool_parser else None,
            self.reasoning_parser(self.prompt_opened_reasoning)
            if self.reasoning_parser else None)


def open_final_message(prompt: str, messages: Sequence[Mapping[str, Any]]) -> str:
    """The rendered conversation cut right after the last message's text, so the answer
    continues it (as transformers' continue_final_message does): whatever the template
    writes after that text (its end-of-turn marker) goes."""
    last = messages[-1] if messages else {}
    content = last.get("content")
    if last.get("role") != "assistant" or not isinstance(content, str) or not content.strip():
        raise ContinuationError("continue_final_message needs a last message from the "
                                "assistant with text to continue")
    end = prompt.rfind(content.strip())
    if end < 0:
        raise ContinuationError("continue_final_message: the chat template does not write "
                                "the last message's text as it is, so it cannot be continued")
    return prompt[:end + len(content.strip())]


def plan_chat(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]],
              options: ChatOptions, tool_parser: str = AUTO,
              reasoning_parser: str | None = None) -> ChatPlan:
    """Raises ChatRequestError subclasses (app/chat/errors.py) for requests it cannot
    serve, and TokenizerError for a template that fails on these messages."""
    mode, _ = chosen_tools(options.tools, options.tool_choice)
    template = tokenizer.chat_template
    parser = resolve_tool_parser(tool_parser, template) if mode != "none" else None
    if options.continue_final_message and options.add_generation_prompt:
        raise ContinuationError("continue_final_message needs add_generation_prompt false "
                                "(the answer continues the last message, no new turn)")
    prompt = render_chat(tokenizer, [dict(m) for m in messages],
                         tools=[dict(t) for t in options.tools] if parser else None,
                         template_kwargs=dict(options.template_kwargs),
                         history_id=parser.history_id if parser else None,
                         add_generation_prompt=options.add_generation_prompt)
    if options.continue_final_message:
        prompt = open_final_message(prompt, messages)
    reasoning = (resolve_reasoning_parser(reasoning_parser, template)
                 if options.separate_reasoning else None)
    if options.reasoning_budget is not None and reasoning is None:
        raise BudgetUnsupported("a thinking budget needs a reasoning parser "
                                "(--reasoning-parser) for a model whose template reasons")
    opened = reasoning is not None and starts_in_reasoning(prompt)
    # the added tokens a grammar may name or let through; end-of-sequence ones end answers
    ids = {text: i for text, i in added_token_ids(
        tokenizer.backend.get_added_tokens_decoder()).items() if i not in tokenizer.eos_ids}
    rules = (tool_call_rules(parser.syntax, options.tools, options.tool_choice,
                             options.parallel_tool_calls, ids) if parser else None)
    if options.answer_schema is not None:
        if mode == "required":
            raise AnswerFormatConflict("a required or named tool_choice and response_format "
                                       "both decide the answer's form: send one of them")
        # behind reasoning the schema goes into this grammar; without, the caller applies
        # it as usual (and calls, if any, are parsed but not constrained)
        rules = json_answer(options.answer_schema) if reasoning else None
    spec = (ReasoningSpec(reasoning.open_tag, reasoning.close_tag, opened,
                          options.reasoning_budget) if reasoning else None)
    return ChatPlan(
        prompt=prompt, grammar=chat_grammar(rules, spec, ids),
        skip_special_tokens=not (parser and parser.needs_special_tokens),
        tool_parser=parser, reasoning_parser=reasoning, prompt_opened_reasoning=opened,
        tool_choice=mode, answer_in_grammar=options.answer_schema is not None
        and reasoning is not None)
