"""What every legacy completion `logprobs.text_offset` must satisfy, for the tests."""

from __future__ import annotations

import itertools


def assert_offsets_cover(text: str, tokens: list[str], offsets: list[int]) -> None:
    """Offsets start at 0, never decrease and never pass the end of `text`, so the slices
    between them put `text` back together; a token of whole characters, after another,
    is the slice it starts (a token after a split character also owns that character)."""
    assert len(offsets) == len(tokens)
    assert offsets[0] == 0, offsets
    assert all(a <= b for a, b in itertools.pairwise(offsets)), offsets
    assert offsets[-1] <= len(text), (offsets, len(text))
    bounds = [*offsets, len(text)]
    slices = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert "".join(slices) == text
    for i in range(1, len(tokens) - 1):
        whole = not tokens[i].startswith("bytes:") and "\ufffd" not in tokens[i]
        if whole and not tokens[i - 1].startswith("bytes:"):
            assert slices[i] == tokens[i], (i, slices, tokens)
