"""Stop strings: found across token boundaries, held back while undecided, never scanned
beyond the held-back text (linear in the output), and held off by min_tokens."""

from __future__ import annotations

from collections.abc import Sequence

from app.engine.stop_text import StopText


class CharDetokenizer:
    """One character per token id (chr), enough to drive StopText exactly."""

    def push(self, token_ids: Sequence[int]) -> str:
        return "".join(map(chr, token_ids))

    def flush(self) -> str:
        return ""


def feed(stop: tuple[str, ...], text: str, match_from: int = 0) -> tuple[str, bool, StopText]:
    stop_text = StopText(CharDetokenizer(), stop)  # type: ignore[arg-type]
    out = ""
    for i, ch in enumerate(text):
        delta, hit = stop_text.push([ord(ch)], match_stop=i >= match_from)
        out += delta
        if hit:
            return out, True, stop_text
    return out + stop_text.finish(), False, stop_text


def test_stop_string_across_tokens_is_cut_and_never_emitted() -> None:
    assert feed(("END",), "abcENDxyz")[:2] == ("abc", True)
    assert feed(("xx", "c"), "abcxx")[:2] == ("ab", True)  # the earliest stop wins


def test_the_matched_stop_string_is_named() -> None:
    """Which stop string ended the text (Anthropic's stop_sequence): the earliest found."""
    assert feed(("xx", "c"), "abcxx")[2].matched == "c"
    assert feed(("ND", "END"), "abENDx")[2].matched == "END"
    assert feed(("END",), "abc")[2].matched is None


def test_possible_stop_prefix_is_held_back_then_released() -> None:
    stop_text = StopText(CharDetokenizer(), ("STOP",))  # type: ignore[arg-type]
    assert stop_text.push([ord("a")]) == ("a", False)
    assert stop_text.push([ord("S")]) == ("", False)  # might start "STOP"
    assert stop_text.push([ord("T")]) == ("", False)
    assert stop_text.push([ord("x")]) == ("STx", False)  # it did not
    assert stop_text.finish() == ""


def test_held_back_text_stays_bounded_by_the_stop_length() -> None:
    """The per-token work looks only at the held-back text plus the new text: over a long
    generation the held-back text never grows with the output (the old code re-scanned it all)."""
    stop = ("a" * 200 + "b",)
    stop_text = StopText(CharDetokenizer(), stop)  # type: ignore[arg-type]
    emitted = 0
    for _ in range(20_000):
        delta, hit = stop_text.push([ord("a")])
        assert not hit and len(stop_text.held) <= 200
        emitted += len(delta)
    assert emitted == 20_000 - len(stop_text.held)
    # no whole-text buffer
    assert vars(stop_text).keys() == {"detokenizer", "stop", "include_stop", "matched", "held"}


def test_min_tokens_holds_off_stop_strings_then_matches_new_text() -> None:
    out, hit, _ = feed((" ",), "ab cd ef", match_from=4)
    assert (out, hit) == ("ab cd", True)  # the first space came before min_tokens
    out, hit, _ = feed((" ",), "ab cd", match_from=100)
    assert (out, hit) == ("ab cd", False)


def test_include_stop_keeps_the_earliest_stop_string_and_names_it() -> None:
    for include, expected in ((False, "abc"), (True, "abcEN")):
        stop_text = StopText(CharDetokenizer(), ("ENDX", "EN", "Q"), include)  # type: ignore[arg-type]
        out = ""
        for ch in "abcENDxQ":
            delta, hit = stop_text.push([ord(ch)])
            out += delta
            if hit:
                break
        # "EN" completes first (at "abcEN"); "ENDX" never does; text after it is dropped
        assert (out, hit, stop_text.matched) == (expected, True, "EN")
    stop_text = StopText(CharDetokenizer(), ("AB", "ABC"), True)  # type: ignore[arg-type]
    delta, hit = stop_text.push([ord(c) for c in "xABCy"])
    # both start at the same place: the longer one, which holds the other, is named
    assert (delta, hit, stop_text.matched) == ("xABC", True, "ABC")
