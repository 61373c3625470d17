"""OpenAI's legacy completion `logprobs` (tokens, token_logprobs, top_logprobs,
text_offset), for a whole response or for a stream of chunks.

Token strings follow OpenAI's legacy convention: a token that is not whole UTF-8 (one byte
of a character split across byte tokens) is written "bytes:\\xe6\\x9d" (its bytes, each
as \\x and two hex digits) instead of vLLM's replacement characters, so that no two such
tokens look alike and a client can put the bytes back together.

`text_offset` is the position in the choice's `text` where each token's text starts,
counted on across the chunks of a stream (as vLLM does) and never past the end of the
text: a token that completes a character split across tokens owns that character, the
tokens before it span nothing; a token whose text is not in `text` (a BOS token the
server added, text cut by a stop string) spans nothing either. So the offsets never
decrease and the slices between them put `text` back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.api.schemas import CompletionLogprobs
from app.api.token_bytes import token_string
from app.sampling_params import TokenLogprob
from app.tokenizer import Tokenizer

# A UTF-8 character is at most 4 bytes: text pending longer than that is not waiting for
# the rest of a character (the text itself holds a U+FFFD), and is let through.
_MAX_PENDING = 4


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


class TokenPieces:
    """The text each token adds to the decoded text of the tokens before it: a character
    split across tokens comes with the token that completes it ('' from those before).
    Decodes a short window of recent tokens, so the cost per token stays constant."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool,
                 context: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(context[-_MAX_PENDING:])
        self._done = self._decode(self._ids).rstrip("\ufffd")  # the window's text so far
        self._held = 0  # tokens since the window's text last ended on a whole character

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        # A trailing U+FFFD is a character still being spelled, unless it has been
        # trailing for longer than any character takes (then the text holds one).
        clean = text.rstrip("\ufffd") if self._held < _MAX_PENDING else text
        self._held = self._held + 1 if clean != text else 0
        piece = clean[_common_prefix(self._done, clean):]
        self._done = clean
        if not self._held:  # keep a few whole tokens as context (spaces, merges)
            self._ids = self._ids[-_MAX_PENDING:]
            self._done = self._decode(self._ids)
        return piece


@dataclass(frozen=True)
class EchoedPrompt:
    """A prompt as echo shows it: its token ids and text and, when scored, its tokens'
    logprobs (the first None: nothing predicts it)."""

    ids: list[int]
    text: str
    logprobs: list[float | None]
    tops: list[dict[str, float] | None]


class ChoiceLogprobs:
    """One choice's legacy logprobs, assembled chunk by chunk (a whole response is one
    chunk), with text_offset counting on across the chunks."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int],
                 skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        # Generated text is detokenized as the engine does it for this request.
        self._pieces = TokenPieces(tokenizer, skip_special_tokens=skip_special_tokens,
                                   context=prompt_ids)
        self._sent = 0  # characters of the choice's text in the chunks so far
        self._end = 0  # where the tokens so far end in the text

    def chunk(self, text: str, echo: EchoedPrompt | None,
              entries: Sequence[TokenLogprob]) -> CompletionLogprobs:
        """The logprobs of one chunk whose text is `text` (with echo, the prompt's text
        first, then the generated text)."""
        start = self._sent
        self._sent += len(text)
        tokens: list[str] = []
        values: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        if echo is not None:
            offsets.extend(start + o for o in self._prompt_offsets(echo))
            tokens.extend(token_string(self._tokenizer, t) for t in echo.ids)
            values.extend(echo.logprobs)
            tops.extend(echo.tops)
            self._end = start + len(echo.text)
        for e in entries:
            # Text held back (a possible stop string) is not in the chunk yet.
            offsets.append(min(self._end, self._sent))
            self._end += len(self._pieces.push(e.token_id))
            tokens.append(token_string(self._tokenizer, e.token_id))
            values.append(e.logprob)
            tops.append({token_string(self._tokenizer, t): lp for t, lp in e.top})
        return CompletionLogprobs(tokens=tokens, token_logprobs=values, top_logprobs=tops,
                                  text_offset=offsets)

    def _prompt_offsets(self, echo: EchoedPrompt) -> list[int]:
        """Where each prompt token starts in the echoed text; a token whose text the
        echoed text does not hold there (a BOS the server added) spans nothing."""
        pieces = TokenPieces(self._tokenizer, skip_special_tokens=False)
        offsets, pos = [], 0
        for token_id in echo.ids:
            offsets.append(pos)
            piece = pieces.push(token_id)
            if piece and echo.text.startswith(piece, pos):
                pos += len(piece)
        return offsets
