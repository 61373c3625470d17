"""An incremental index of one sequence's n-grams, for n-gram prompt lookup.

`propose_ngram` (app.engine.speculative) scans the whole prompt + output backwards on
every step, in Python: for a few hundred tokens that is tens of microseconds a sequence
a step, whether or not it finds anything, on steps that take about a millisecond once
compiled (measured: n-gram speculation with nothing to look up ran at 0.94x of plain
decoding). Here each n-gram is indexed once, when the token after it arrives, so a
lookup is a dictionary read per n. It proposes exactly what the scan proposes: the k
tokens after the most recent earlier occurrence of the longest suffix (n_max down to
n_min tokens) that has a token after it.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramIndex:
    def __init__(self, n_min: int, n_max: int) -> None:
        self.n_min, self.n_max = n_min, n_max
        self._reset()

    def _reset(self) -> None:
        # per n: n-gram -> start of its most recent occurrence with a token after it
        self.starts: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(self.n_min, self.n_max + 1)}
        self.indexed = 0  # tokens seen: every n-gram ending before the last is indexed

    def _update(self, tokens: Sequence[int]) -> None:
        size = len(tokens)
        if size < self.indexed:  # not the sequence this index has seen grow: start over
            self._reset()
        # an n-gram is indexed once a token follows it: those ending at 1..size-1
        for end in range(max(self.indexed, 1), size):
            for n, starts in self.starts.items():
                start = end - n
                if start >= 0:
                    starts[tuple(tokens[start:end])] = start
        self.indexed = max(self.indexed, size)

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to k tokens that followed the most recent earlier occurrence of the
        longest suffix of `tokens` that occurred before; [] if none. `tokens` is the
        sequence so far: the same list, grown, on each call."""
        self._update(tokens)
        size = len(tokens)
        for n in range(min(self.n_max, size - 1), self.n_min - 1, -1):
            start = self.starts[n].get(tuple(tokens[size - n:]))
            if start is not None:
                return list(tokens[start + n:start + n + k])
        return []
