"""Tool-call ids: OpenAI's shape (`call_` + 24 random letters and digits) by default, and
the 9 letters-and-digits that Mistral's chat templates insist on (they raise "Tool call IDs
should be alphanumeric strings with length 9!" for anything else)."""

from __future__ import annotations

import hashlib
import re
import secrets
import string

_ALPHANUMERIC = string.ascii_letters + string.digits
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def _random_alphanumeric(length: int) -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def openai_tool_call_id() -> str:
    return "call_" + _random_alphanumeric(24)


def mistral_tool_call_id() -> str:
    return _random_alphanumeric(9)


def as_mistral_id(call_id: str) -> str:
    """A 9-character id standing for `call_id` when a conversation with other ids (a client's
    `call_...` ones) is rendered with a Mistral template: the same id always maps to the same
    9 characters, so an assistant's call and the tool result answering it still match."""
    if _MISTRAL_ID.fullmatch(call_id):
        return call_id
    digest = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    out = []
    for _ in range(9):
        digest, digit = divmod(digest, len(_ALPHANUMERIC))
        out.append(_ALPHANUMERIC[digit])
    return "".join(out)
