"""Pydantic's validation errors about a request body, said so that a person can act on them.

Two kinds get their own message (app.api.errors answers both with 400, like invalid JSON):
- the body is not a JSON object at all (empty, a form post, text, a JSON array):
  pydantic would say ": Input should be a valid dictionary" with no field;
- a field the endpoint does not know (a typo such as `temprature`, or an OpenAI field we
  do not have): silently ignoring it would sample with the default instead, so it is
  named, with the closest known field when one is close.
Every other validation error stays pydantic's own message about the named field (422).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, get_args, get_origin

from fastapi import Request
from pydantic import BaseModel

BODY_NOT_AN_OBJECT = "the body must be a JSON object; send Content-Type: application/json"
_JSON_KINDS = {list: "a JSON array", str: "a JSON string", bool: "a JSON boolean",
               int: "a JSON number", float: "a JSON number", type(None): "JSON null"}


def _is_json_type(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def body_shape_message(request: Request, errors: Sequence[Any]) -> str | None:
    """The message for a body that is not a JSON object, or None when it is one."""
    whole = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
    if not whole:
        return None
    content_type = request.headers.get("content-type", "")
    first = whole[0]
    if first.get("type") == "missing":
        return f"{BODY_NOT_AN_OBJECT} (the body is empty)"
    if not _is_json_type(content_type):
        got = f"Content-Type: {content_type}" if content_type else "no Content-Type header"
        return f"{BODY_NOT_AN_OBJECT} (got {got})"
    kind = _JSON_KINDS.get(type(first.get("input")), "something else")
    return f"{BODY_NOT_AN_OBJECT} (got {kind})"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, unions, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) is not None:  # Optional, unions, lists, Annotated
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []


def _known_fields(request: Request, path: Sequence[str]) -> list[str]:
    """Field names (and aliases) accepted at `path` inside the route's body model."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    annotation = getattr(getattr(body_field, "field_info", None), "annotation", None)
    models = _models_in(annotation)
    for part in path:
        models = [m for model in models if part in model.model_fields
                  for m in _models_in(model.model_fields[part].annotation)]
    return sorted({info.alias or name for model in models
                   for name, info in model.model_fields.items()})


def unknown_fields_message(request: Request, errors: Sequence[Any]
                           ) -> tuple[str, str] | None:
    """(message, param) naming the fields the body model does not know, or None."""
    unknown = [[str(p) for p in e.get("loc", ()) if p != "body"] for e in errors
               if e.get("type") == "extra_forbidden"]
    unknown = [loc for loc in unknown if loc]
    if not unknown:
        return None
    names = [".".join(loc) for loc in unknown]
    first = unknown[0]
    hint = difflib.get_close_matches(first[-1], _known_fields(request, first[:-1]), n=1)
    message = (f"unknown field '{names[0]}'" if len(names) == 1 else
               "unknown fields " + ", ".join(f"'{n}'" for n in names))
    if hint:
        message += f" (did you mean '{'.'.join([*first[:-1], hint[0]])}'?)"
    return message, names[0]
