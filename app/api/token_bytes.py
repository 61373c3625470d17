"""What a token's bytes are, and how OpenAI's APIs write a token that is not whole UTF-8.

Byte-level BPE (GPT-2, Llama 3, Qwen) and byte-fallback (SentencePiece: "<0xE6>") tokens
can hold part of a character; decoding such a token alone gives U+FFFD, which hides its
bytes and makes different tokens look alike. The vocabulary entry still says which bytes
it stands for.
"""

from __future__ import annotations

import functools
import re

from app.tokenizer import Tokenizer

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character -> the byte it stands for: printable
    Latin-1 bytes stand for themselves, the other bytes for 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    alphabet = {chr(b): b for b in printable}
    alphabet.update({chr(256 + i): b for i, b in enumerate(others)})
    return alphabet


def token_bytes(tokenizer: Tokenizer, token_id: int) -> bytes | None:
    """The bytes a token stands for, where its vocabulary entry says (byte-level BPE or
    byte-fallback tokens); None where it does not. Callers ask only about tokens whose
    text alone is not whole UTF-8: a WordPiece-style entry would read as bytes too."""
    piece = tokenizer.id_to_token(token_id)
    if piece is None:
        return None
    fallback = _BYTE_FALLBACK.fullmatch(piece)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    alphabet = _byte_level_alphabet()
    if piece and all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    return None


def token_string(tokenizer: Tokenizer, token_id: int) -> str:
    """A token as OpenAI's legacy logprobs write it: its text, or "bytes:\\x.." when it is
    not whole UTF-8."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" not in text:
        return text
    raw = token_bytes(tokenizer, token_id)
    if raw is None:
        return text
    try:
        return raw.decode("utf-8")  # a real U+FFFD in the vocabulary
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def token_utf8(tokenizer: Tokenizer, token_id: int) -> list[int]:
    """The bytes of a token's text, as chat logprobs' `bytes` give them: the token's own
    bytes where the vocabulary says, else its decoded text's UTF-8."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    # Only where the text hides bytes: other tokenizers' entries (WordPiece's "##ing")
    # are not the bytes of the text.
    raw = token_bytes(tokenizer, token_id) if "\ufffd" in text else None
    return list(raw if raw is not None else text.encode())
