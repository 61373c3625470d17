"""Stop strings: found across token boundaries, held back while undecided, never scanned
beyond the held-back text (linear in the output), and held off by min_tokens."""

from __future__ import annotations

from collections.abc import Sequence

from app.engine.output_processor import StopText


class CharDetokenizer:
    """One character per token id (chr), enough to drive StopText exactly."""

    def push(self, token_ids: Sequence[int]) -> str:
        return "".join(map(chr, token_ids))

    def flush(self) -> str:
        return ""


def feed(stop: tuple[str, ...], text: str, match_from: int = 0) -> tuple[str, bool, StopText]:
    state = StopText(CharDetokenizer(), stop)  # type: ignore[arg-type]
    out = ""
    for i, ch in enumerate(text):
        delta, hit = state.push([ord(ch)], match_stop=i >= match_from)
        out += delta
        if hit:
            return out, True, state
    return out + state.finish(), False, state


def test_stop_string_across_tokens_is_cut_and_never_emitted() -> None:
    assert feed(("END",), "abcENDxyz")[:2] == ("abc", True)
    assert feed(("xx", "c"), "abcxx")[:2] == ("ab", True)  # the earliest stop wins


def test_possible_stop_prefix_is_held_back_then_released() -> None:
    state = StopText(CharDetokenizer(), ("STOP",))  # type: ignore[arg-type]
    assert state.push([ord("a")]) == ("a", False)
    assert state.push([ord("S")]) == ("", False)  # might start "STOP"
    assert state.push([ord("T")]) == ("", False)
    assert state.push([ord("x")]) == ("STx", False)  # it did not
    assert state.finish() == ""


def test_held_back_text_stays_bounded_by_the_stop_length() -> None:
    """The per-token work looks only at the held-back text plus the new text: over a long
    generation the state never grows with the output (the old code re-scanned it all)."""
    stop = ("a" * 200 + "b",)
    state = StopText(CharDetokenizer(), stop)  # type: ignore[arg-type]
    emitted = 0
    for _ in range(20_000):
        delta, hit = state.push([ord("a")])
        assert not hit and len(state.held) <= 200
        emitted += len(delta)
    assert emitted == 20_000 - len(state.held)
    assert vars(state).keys() == {"detokenizer", "stop", "held"}  # no whole-text buffer


def test_min_tokens_holds_off_stop_strings_then_matches_new_text() -> None:
    out, hit, _ = feed((" ",), "ab cd ef", match_from=4)
    assert (out, hit) == ("ab cd", True)  # the first space came before min_tokens
    out, hit, _ = feed((" ",), "ab cd", match_from=100)
    assert (out, hit) == ("ab cd", False)
