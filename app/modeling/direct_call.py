"""A compiled function called without Dynamo's guards once a call's kind is known.

Why: every call of a `torch.compile`d function first runs Dynamo's frame hook, which
evaluates the guards of its cached graphs (one check per parameter, tensor and constant
the graph depends on) to pick the graph; then the graph's wrappers run. For a decode step
of the shipped default-lm that is about 80 us of a 0.9 ms token (AMD EPYC Zen 5, 2
threads; `python -m bench.engine_pair`, docs/PERFORMANCE.md). vLLM skips it the same way:
once a graph is traced, its transformed bytecode is called directly.

How: the caller names each call's kind with a key that holds everything about the
arguments which may pick one traced graph over another: every tensor size that varies
between calls (a symbolic size still picks a graph when the code branches on a range of
it), the flags, which optional inputs are present. The first call of a key goes through
`torch.compile` as usual (tracing if needed); then the cache entry whose guards pass for
those arguments is looked up and its bytecode bound as a plain function, which later
calls of that key run directly. The key is the caller's contract: a key too fine costs
one guard evaluation per new key, one too coarse would run a graph traced for other
arguments. Two nets under it: the graph checks every tensor's size and stride on entry
(inductor's size asserts; such a call is answered by the guarded path), and every
`CHECK_EVERY` direct calls of a key its guards run once, a failing check dropping the key
back to the guarded path with a warning. The decode step's test calls every direct call
through the guards as well and compares the two bit for bit. The decode step compiles
without the size asserts (app.modeling.decode_step.STEP_OPTIONS: they cost more than
the checks its key already makes), so there the key and the periodic guard checks are
the nets.

Falls back to the guarded call, for good, where no entry can be identified (a graph break
split the function, or a torch without the introspection used here).
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list

log = logging.getLogger(__name__)

CHECK_EVERY = 1024  # direct calls of a key between two evaluations of its guards
# Keys kept at most; past it they are all dropped and identified again as they recur (one
# guarded call each). Exact keys (row count x table width x adapters) are many only on a
# long-running server with long contexts; this bounds their memory.
KEYS_KEPT = 4096


class DirectCompiled:
    """`torch.compile(fn, **options)`, called as `self(key, *args, **kwargs)`."""

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        self.fn = fn
        self.compiled = torch.compile(fn, **options)
        self._signature = inspect.signature(fn)
        # key -> (the traced bytecode as a function, its guards), or None: guarded calls
        self._direct: dict[Hashable, tuple[Callable[..., Any], Any] | None] = {}
        self._since_check: dict[Hashable, int] = {}
        self._bound: dict[types.CodeType, Callable[..., Any]] = {}  # one per graph
        self.direct_calls = 0  # for tests and the curious
        self.guarded_calls = 0

    def ready(self, key: Hashable) -> bool:
        """Whether calls of `key` run directly (a caller may then skip what only tracing
        needs, such as marking dimensions dynamic)."""
        return self._direct.get(key) is not None

    def __call__(self, key: Hashable, *args: Any, **kwargs: Any) -> Any:
        direct = self._direct.get(key)
        if direct is not None:
            count = self._since_check[key] + 1
            if count < CHECK_EVERY or self._guards_hold(key, direct[1], args, kwargs):
                self._since_check[key] = count % CHECK_EVERY
                try:
                    out = direct[0](*args, **kwargs)
                except Exception:
                    # The graph refused its inputs on entry (a size assert) because they
                    # are not the kind it was traced for: the guarded path answers this
                    # call. An error the guards cannot explain is the caller's to see.
                    if self._guards_hold(key, direct[1], args, kwargs):
                        raise
                else:
                    self.direct_calls += 1
                    return out
        self.guarded_calls += 1
        out = self.compiled(*args, **kwargs)
        if key not in self._direct:
            if len(self._direct) >= KEYS_KEPT:
                self._direct.clear()
                self._since_check.clear()
            self._direct[key] = self._find(args, kwargs)
            self._since_check[key] = 0
        return out

    def forget(self) -> None:
        """Drop every key (the model's structure changed: a later call re-identifies)."""
        self._direct.clear()
        self._since_check.clear()
        self._bound.clear()

    def _locals(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def _guards_hold(self, key: Hashable, guards: Any, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> bool:
        if guards.check(self._locals(args, kwargs)):
            return True
        log.warning("%s: a direct call of kind %r no longer matches its graph's guards; "
                    "back to guarded calls for it", self.fn.__name__, key)
        del self._direct[key]
        return False

    def _find(self, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[Callable[..., Any], Any] | None:
        """The traced bytecode whose guards pass for these arguments, bound as a function
        with the original's globals, defaults and closure; None where there is none."""
        try:
            frame_locals = self._locals(args, kwargs)
            for entry in _debug_get_cache_entry_list(self.fn.__code__):
                if not entry.guard_manager.check(frame_locals):
                    continue
                code = entry.code
                if any(name.startswith("__resume_at") for name in code.co_names):
                    log.info("%s: a graph break splits it; calls stay guarded",
                             self.fn.__name__)
                    return None
                fn = self._bound.get(code)
                if fn is None:
                    fn = types.FunctionType(code, self.fn.__globals__, self.fn.__name__,
                                            self.fn.__defaults__, self.fn.__closure__)
                    fn.__kwdefaults__ = self.fn.__kwdefaults__
                    self._bound[code] = fn
                return fn, entry.guard_manager
        except Exception as exc:  # torch without this introspection: stay guarded
            log.info("%s: no direct call (%r); calls stay guarded", self.fn.__name__, exc)
        return None
