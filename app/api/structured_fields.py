"""Request fields -> one structured-output constraint, compiled off the event loop.

Accepted (at most one per request, else 400): OpenAI's `response_format` (completions and
chat: `json_object`, `json_schema`), vLLM's `structured_outputs` (`json`, `regex`,
`choice`, `grammar`, `json_object`) and its older `guided_json` / `guided_regex` /
`guided_choice` / `guided_grammar`. `response_format.json_schema.strict: true` closes the
schema's objects (app/structured_grammar.py). Compiling (app.structured) runs off the event
loop with a time limit (`--structured-output-timeout`) that stops the compile itself; a
constraint that is invalid, unsupported or too slow to compile is refused with 400 before
anything is queued.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from app.api.errors import BadRequest
from app.api.schemas import ResponseFormat, SamplingFields
from app.api.state import ServedModel
from app.config import Settings
from app.structured import (
    Constraint,
    ConstraintCompiler,
    ConstraintSpec,
    ConstraintTooSlow,
    InvalidConstraint,
)


def _schema_text(value: dict[str, Any] | bool | str, param: str) -> str:
    """The schema as JSON text: an object, or a boolean schema (`true`: any value;
    `false`: refused when compiled, as nothing matches it)."""
    if not isinstance(value, str):
        return json.dumps(value)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{param} is not valid JSON: {exc}", param=param) from None
    if not isinstance(parsed, dict | bool):
        raise BadRequest(f"{param} must be a JSON Schema (an object or a boolean)",
                         param=param)
    return json.dumps(parsed)


def constraint_spec(body: SamplingFields, response_format: ResponseFormat | None = None
                    ) -> ConstraintSpec | None:
    specs: list[ConstraintSpec] = []
    if response_format is not None and response_format.type != "text":
        if response_format.type == "json_object":
            specs.append(ConstraintSpec("json_object", "", "response_format"))
        else:
            if response_format.json_schema is None:
                raise BadRequest("response_format json_schema needs json_schema.schema",
                                 param="response_format")
            specs.append(ConstraintSpec("json_schema", _schema_text(
                response_format.json_schema.schema_, "response_format"), "response_format",
                strict=bool(response_format.json_schema.strict)))
    so = body.structured_outputs
    if so is not None:
        given = [k for k, v in (("json", so.json_), ("regex", so.regex), ("choice", so.choice),
                                ("grammar", so.grammar), ("json_object", so.json_object))
                 if v is not None and v is not False]
        if len(given) != 1:
            raise BadRequest("structured_outputs needs exactly one of json, regex, choice, "
                             f"grammar, json_object (got {given or 'none'})",
                             param="structured_outputs")
        if so.json_ is not None:
            specs.append(ConstraintSpec("json_schema", _schema_text(
                so.json_, "structured_outputs.json"), "structured_outputs.json"))
        elif so.regex is not None:
            specs.append(ConstraintSpec("regex", so.regex, "structured_outputs.regex"))
        elif so.choice is not None:
            specs.append(ConstraintSpec("choice", json.dumps(so.choice),
                                        "structured_outputs.choice"))
        elif so.grammar is not None:
            specs.append(ConstraintSpec("grammar", so.grammar, "structured_outputs.grammar"))
        else:
            specs.append(ConstraintSpec("json_object", "", "structured_outputs.json_object"))
    if body.guided_json is not None:
        specs.append(ConstraintSpec("json_schema", _schema_text(body.guided_json,
                                                                "guided_json"), "guided_json"))
    if body.guided_regex is not None:
        specs.append(ConstraintSpec("regex", body.guided_regex, "guided_regex"))
    if body.guided_choice is not None:
        specs.append(ConstraintSpec("choice", json.dumps(body.guided_choice), "guided_choice"))
    if body.guided_grammar is not None:
        specs.append(ConstraintSpec("grammar", body.guided_grammar, "guided_grammar"))
    if len(specs) > 1:
        raise BadRequest("give one structured-output constraint, not several ("
                         + ", ".join(s.param for s in specs) + ")", param=specs[1].param)
    return specs[0] if specs else None


async def request_constraint(model: ServedModel, settings: Settings, body: SamplingFields,
                             response_format: ResponseFormat | None = None
                             ) -> Constraint | None:
    """The request's compiled constraint, or None; 400 for a bad or too slow one."""
    spec = constraint_spec(body, response_format)
    return None if spec is None else await compile_constraint(model, settings, spec)


async def compile_constraint(model: ServedModel, settings: Settings, spec: ConstraintSpec
                             ) -> Constraint:
    """`spec` compiled for `model` in a thread, under the time limit; 400 when it fails.
    The thread returns by the limit: the compile it waits for is stopped there."""
    owner = model.owner  # an adapter's view shares its base model's compiler
    if owner.compiler is None:
        owner.compiler = ConstraintCompiler(owner.tokenizer, owner.loaded.config.vocab_size,
                                            limit_s=settings.structured_output_timeout)
    compiler: ConstraintCompiler = owner.compiler
    try:
        return await asyncio.to_thread(compiler.compile, spec)
    except InvalidConstraint as exc:
        raise BadRequest(exc.message, param=exc.param) from None
    except ConstraintTooSlow as exc:
        raise BadRequest(f"{exc} (--structured-output-timeout)", param=exc.param) from None
