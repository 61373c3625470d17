"""A compiled function called directly (app.modeling.direct_call): once a kind of call is
traced, later calls of that kind skip Dynamo's guards and compute what the guarded call
computes; a call whose arguments no longer match its graph goes back to the guarded path;
a function that a graph break splits is never called directly."""

from __future__ import annotations

import pytest
import torch

from app.modeling import direct_call
from app.modeling.direct_call import DirectCompiled
from tests.helpers import require_cpp_compiler


@pytest.fixture(autouse=True)
def _needs_a_cpp_compiler() -> None:
    require_cpp_compiler()


def scaled_sum(x: torch.Tensor, w: torch.Tensor, double: bool, *, bias: float = 0.5
               ) -> torch.Tensor:
    y = (x @ w).relu().sum(-1)
    return (2 * y if double else y) + bias


def broken(x: torch.Tensor) -> torch.Tensor:
    y = x.sin()
    torch._dynamo.graph_break()
    return y.cos()


def test_direct_calls_compute_what_the_guarded_call_computes() -> None:
    f = DirectCompiled(scaled_sum, dynamic=True)
    w = torch.randn(8, 4)
    for double in (False, True):
        for rows in (3, 5, 7):
            x = torch.randn(rows, 8)
            torch.testing.assert_close(f(("rows", double), x, w, double),
                                       scaled_sum(x, w, double))
        assert f.ready(("rows", double))
    # Each key was traced (guarded) once, then ran directly; keyword arguments pass through.
    assert f.guarded_calls == 2 and f.direct_calls == 4
    x = torch.randn(4, 8)
    torch.testing.assert_close(f(("rows", True), x, w, True, bias=0.25),
                               scaled_sum(x, w, True, bias=0.25))
    assert f.direct_calls == 5


def test_a_call_that_breaks_its_guards_goes_back_to_the_guarded_path(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(direct_call, "CHECK_EVERY", 1)  # check the guards on every call
    f = DirectCompiled(scaled_sum, dynamic=None)
    w = torch.randn(8, 4)
    x = torch.randn(3, 8)
    f("same key", x, w, False)  # traced with double=False under this key
    assert f.ready("same key")
    # A caller that wrongly gives a call of another graph (double=True) the same key: the
    # guard check catches it, the call is answered by the guarded path, and the key is
    # identified again for what it now gets.
    torch.testing.assert_close(f("same key", x, w, True), scaled_sum(x, w, True))
    assert "no longer matches its graph's guards" in caplog.text
    assert f.guarded_calls == 2 and f.direct_calls == 0 and f.ready("same key")
    torch.testing.assert_close(f("same key", x, w, True), scaled_sum(x, w, True))
    assert f.direct_calls == 1


def test_inputs_a_graph_refuses_on_entry_are_answered_by_the_guarded_path() -> None:
    f = DirectCompiled(scaled_sum, dynamic=None)
    w = torch.randn(8, 4)
    f("k", torch.randn(3, 8), w, False)  # traced for 3 rows exactly (no dimension marked)
    x = torch.randn(5, 8)  # the graph's size check refuses it; its guards explain why
    torch.testing.assert_close(f("k", x, w, False), scaled_sum(x, w, False))
    assert f.guarded_calls == 2 and f.ready("k")
    torch.testing.assert_close(f("k", x, w, False), scaled_sum(x, w, False))
    assert f.direct_calls == 1


def test_a_graph_break_keeps_calls_guarded() -> None:
    f = DirectCompiled(broken)
    x = torch.randn(5)
    for _ in range(3):
        torch.testing.assert_close(f("k", x), x.sin().cos())
    assert not f.ready("k")
    assert f.direct_calls == 0 and f.guarded_calls == 3


def test_forget_drops_every_key() -> None:
    f = DirectCompiled(scaled_sum)
    w, x = torch.randn(8, 4), torch.randn(2, 8)
    f("k", x, w, False)
    assert f.ready("k")
    f.forget()
    assert not f.ready("k")
    torch.testing.assert_close(f("k", x, w, False), scaled_sum(x, w, False))
    assert f.ready("k")


def test_keys_past_the_limit_are_dropped_and_identified_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_call, "KEYS_KEPT", 2)
    f = DirectCompiled(scaled_sum, dynamic=True)
    w = torch.randn(8, 4)
    xs = {rows: torch.randn(rows, 8) for rows in (2, 3, 4)}
    for rows, x in xs.items():
        f(rows, x, w, False)
    assert f.ready(4) and not f.ready(2) and not f.ready(3)  # the third key dropped two
    torch.testing.assert_close(f(2, xs[2], w, False), scaled_sum(xs[2], w, False))
    assert f.ready(2)
