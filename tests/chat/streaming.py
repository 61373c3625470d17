"""Helpers that feed a parser its text in pieces, the way a stream would deliver it."""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Callable, Sequence

from app.chat.output import ChatOutputParser
from app.chat.types import ParsedMessage


def counting_ids() -> Callable[[], str]:
    """Ids call_0, call_1, ...: the same for a stream and a whole parse."""
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def parse_pieces(make: Callable[[], ChatOutputParser], pieces: Sequence[str]) -> ParsedMessage:
    parser = make()
    deltas = [parser.feed(piece) for piece in pieces]
    deltas.append(parser.finish())
    return ParsedMessage.from_deltas(deltas)


def byte_splits(text: str) -> list[list[str]]:
    """The text cut in two at every byte of its UTF-8, each side decoded as a stream
    decoder would (a character cut in half arrives with its second half)."""
    data = text.encode()
    out = []
    for cut in range(len(data) + 1):
        decoder = codecs.getincrementaldecoder("utf-8")()
        out.append([decoder.decode(data[:cut]), decoder.decode(data[cut:], final=True)])
    return out
