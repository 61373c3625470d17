"""StopText: a completion's detokenized text turned into safe deltas, with stop strings
found across token boundaries.

Cheap per token: stop strings are searched only in the text that is still held back plus
the new text (at most the longest stop string's length), never in the whole generated
text.
"""

from __future__ import annotations

from app.tokenizer import IncrementalDetokenizer


class StopText:
    """Turns a completion's detokenized text into safe deltas, finding stop strings even
    across token boundaries. Text that might be the start of a stop string is held back
    until the next tokens decide; the stop string itself is never emitted."""

    def __init__(self, detokenizer: IncrementalDetokenizer, stop: tuple[str, ...]) -> None:
        self.detokenizer = detokenizer
        self.stop = stop
        self.held = ""  # decoded but not yet emitted: a possible start of a stop string
        self.matched: str | None = None  # the stop string that ended the text, once found

    def push(self, token_ids: list[int], match_stop: bool = True) -> tuple[str, bool]:
        """-> (text now safe to emit, whether a stop string was found). With match_stop
        false (min_tokens not reached) stop strings are not matched."""
        new = self.detokenizer.push(token_ids)
        if not new:
            return "", False
        earlier = len(self.held)
        text = self.held + new
        if match_stop and self.stop:
            # Only occurrences that end in the new text: earlier ones were checked already.
            found = [(i, s) for i, s in ((text.find(s, max(0, earlier - len(s) + 1)), s)
                                         for s in self.stop) if i >= 0]
            if found:
                self.held = ""
                at, self.matched = min(found, key=lambda f: f[0])  # the earliest one
                return text[:at], True
        keep = self._held_back(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop
        string. Only the last len(stop) - 1 characters can be one, so the cost per token
        is bounded by the stop strings' lengths, not by the text's."""
        longest = 0
        for stop in self.stop:
            i = text.find(stop[0], max(0, len(text) - len(stop) + 1))
            while i >= 0:
                if stop.startswith(text[i:]):
                    longest = max(longest, len(text) - i)
                    break  # the first match is this stop string's longest suffix
                i = text.find(stop[0], i + 1)
        return longest

    def finish(self) -> str:
        """End of stream without a stop string: everything left, held-back text included."""
        rest, self.held = self.held + self.detokenizer.flush(), ""
        return rest
