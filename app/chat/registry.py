"""Parsers by name (`--tool-call-parser`, `--reasoning-parser`), and `auto`: the family a
checkpoint's chat template was written for."""

from __future__ import annotations

from app.chat.hermes import HermesToolParser
from app.chat.llama3_json import Llama3JsonToolParser
from app.chat.mistral import MistralToolParser
from app.chat.parsing import ToolCallParser
from app.chat.reasoning import THINK_OPEN, DeepSeekR1ReasoningParser, ThinkReasoningParser

TOOL_PARSERS: dict[str, type[ToolCallParser]] = {
    parser.name: parser
    for parser in (HermesToolParser, Llama3JsonToolParser, MistralToolParser)
}
REASONING_PARSERS: dict[str, type[ThinkReasoningParser]] = {
    parser.name: parser for parser in (ThinkReasoningParser, DeepSeekR1ReasoningParser)
}
AUTO = "auto"
# A template that knows no tools gets them described in a system message in hermes' syntax
# (app/chat/templates.py), so its answers are parsed as hermes.
FALLBACK_TOOL_PARSER = HermesToolParser.name


def tool_parser_for_template(template: str | None) -> str:
    """The family whose call syntax the template teaches (the first whose marker it holds)."""
    for name, parser in TOOL_PARSERS.items():
        if template and any(marker in template for marker in parser.template_markers):
            return name
    return FALLBACK_TOOL_PARSER


def reasoning_parser_for_template(template: str | None) -> str | None:
    """`qwen3` (the `<think>` parser) for a template that mentions `<think>`, else none."""
    return ThinkReasoningParser.name if template and THINK_OPEN in template else None


def resolve_tool_parser(name: str, template: str | None) -> type[ToolCallParser]:
    return TOOL_PARSERS[tool_parser_for_template(template) if name == AUTO else name]


def resolve_reasoning_parser(name: str | None, template: str | None
                             ) -> type[ThinkReasoningParser] | None:
    if name == AUTO:
        name = reasoning_parser_for_template(template)
    return REASONING_PARSERS[name] if name else None
