"""`python -m app serve --help`, written from the Settings model for a person to read.

pydantic-settings' own help shows Python internals (`list[str]`, `{Path,null}`,
`default factory: Settings.<lambda>`); this one shows plain value names, the real
defaults (the shipped models, not a lambda) and each flag's LLM_* variable. Generated
from Settings.model_fields, so a new setting appears here without further work.
"""

from __future__ import annotations

import textwrap
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from app.config import ENV_PREFIX, Settings

_WIDTH = 88
_INDENT = 8

INTRO = f"""\
usage: python -m app serve [--FLAG VALUE ...]

Run the HTTP server. Every flag is also an environment variable, named with the
{ENV_PREFIX} prefix, in capitals, _ for -: --max-num-seqs 8 is {ENV_PREFIX}MAX_NUM_SEQS=8.
A flag wins over its variable. Lists: repeat the flag (--model a --model b), or separate
with commas in the variable ({ENV_PREFIX}MODEL=a,b). Switches: --FLAG / --no-FLAG, or
{ENV_PREFIX}FLAG=true|false.
"""


def _plain(annotation: Any) -> tuple[str, bool]:
    """(value name, repeatable) of a field's type: TEXT, N, X, PATH, KEY or a|b|c."""
    origin = get_origin(annotation)
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin is Literal:
        return "|".join(str(a) for a in get_args(annotation)), False
    if origin in (Union, types.UnionType) and args:
        return _plain(args[0])
    if origin is not None and origin is not list and args:  # Annotated[...]
        return _plain(args[0])
    if origin is list:
        return _plain(args[0])[0], True
    names: dict[Any, str] = {int: "N", float: "X", str: "TEXT", Path: "PATH",
                             SecretStr: "KEY", bool: ""}
    return names.get(annotation, "VALUE"), False


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is None or value == []:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _entry(name: str, info: FieldInfo) -> str:
    flag = "--" + name.replace("_", "-")
    value, repeatable = _plain(info.annotation)
    head = f"  {flag} / --no-{flag[2:]}" if value == "" else f"  {flag} {value}"
    if repeatable:
        head += " (repeatable)"
    env = ENV_PREFIX + name.upper()
    text = f"{info.description or ''} [default: {_default(info)}; env: {env}]"
    body = textwrap.fill(text, _WIDTH, initial_indent=" " * _INDENT,
                         subsequent_indent=" " * _INDENT, break_on_hyphens=False)
    return f"{head}\n{body}"


def serve_help() -> str:
    entries = [_entry(name, info) for name, info in Settings.model_fields.items()]
    return INTRO + "\noptions:\n  -h, --help\n        show this help and exit\n" + "\n".join(
        entries) + "\n"
