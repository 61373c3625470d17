"""Token strings, token bytes and per-token text pieces (what completions' text_offset is
built from), for a byte-level BPE and for a SentencePiece-style byte-fallback tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models

from app.api.completion_logprobs import TokenPieces
from app.api.token_bytes import token_string, token_utf8
from app.tokenizer import Tokenizer

TEXTS = ["hello world", "東京", "naïve café 🦊!", "a\u00a0b\u2028c", "x" * 3 + "é" * 5]


def byte_fallback() -> Tokenizer:
    """Llama-2 style: "▁word" pieces, and "<0xE6>" tokens for bytes outside them."""
    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    vocab.update({"▁hello": 256, "▁x": 257})
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return Tokenizer(backend=backend)


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_put_the_text_back_together(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = TokenPieces(tokenizer, skip_special_tokens=True)
    got = [pieces.push(t) for t in ids]
    assert "".join(got) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in got)
    # Context changes nothing for a text that starts on a whole character.
    prefix = tokenizer.encode("so ", add_special_tokens=False)
    with_context = TokenPieces(tokenizer, skip_special_tokens=True, context=prefix)
    assert [with_context.push(t) for t in ids] == got


def test_byte_level_tokens_that_split_a_character(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("東京", add_special_tokens=False)
    raw = "東京".encode()
    strings = [token_string(tokenizer, t) for t in ids]
    assert all(s.startswith("bytes:") for s in strings)
    # The "bytes:\\x.." strings spell the text's bytes, in order.
    spelled = "".join(s.removeprefix("bytes:") for s in strings)
    assert bytes.fromhex(spelled.replace("\\x", "")) == raw
    assert b"".join(bytes(token_utf8(tokenizer, t)) for t in ids) == raw
    whole = tokenizer.encode("hello", add_special_tokens=False)
    assert [token_string(tokenizer, t) for t in whole] == [
        tokenizer.decode([t]) for t in whole]


def test_byte_fallback_tokens() -> None:
    tok = byte_fallback()
    ids = [256, 0xE6, 0x9D, 0xB1, 257]
    assert tok.decode(ids) == "hello東 x"
    assert [token_string(tok, t) for t in ids] == ["hello", "bytes:\\xe6", "bytes:\\x9d",
                                                   "bytes:\\xb1", "x"]
    assert [token_utf8(tok, t) for t in ids[1:4]] == [[0xE6], [0x9D], [0xB1]]
    pieces = TokenPieces(tok, skip_special_tokens=True)
    assert [pieces.push(t) for t in ids] == ["hello", "", "", "東", " x"]


def test_a_real_replacement_character_is_let_through(tokenizer: Tokenizer) -> None:
    """Text that holds U+FFFD itself is not held back for ever as a split character."""
    ids = tokenizer.encode("a\ufffdb c d e", add_special_tokens=False)
    pieces = TokenPieces(tokenizer, skip_special_tokens=True)
    assert "".join(pieces.push(t) for t in ids) == tokenizer.decode(ids)
