"""bench.kernel_ab's preparation of two revisions' kernels for one process (the build and
timing themselves take minutes: run `python -m bench.kernel_ab` by hand)."""

from __future__ import annotations

import re

from app.kernels.build import HEADERS, SOURCES
from bench.kernel_ab import kernel_source, renamed

REGISTRATION = re.compile(r"TORCH_LIBRARY(?:_FRAGMENT|_IMPL)?\((\w+)")


def test_every_registration_moves_to_the_tagged_namespace() -> None:
    """Two builds in one process may not both register `llm_quant`: every TORCH_LIBRARY,
    fragment and impl of every kernel source names the tag's namespace, and nothing else
    in the source changes."""
    seen = 0
    for path in SOURCES:
        source = path.read_text()
        before = REGISTRATION.findall(source)
        after = REGISTRATION.findall(renamed(source, "base"))
        assert before and set(before) == {"llm_quant"}, path.name
        assert after == ["llm_quant_base"] * len(before), path.name
        assert renamed(source, "base").replace("llm_quant_base", "llm_quant") == source
        seen += len(before)
    assert seen >= 6  # quant_linear, int_dot and paged_attention: a library and impls


def test_sources_come_from_the_tree_or_a_revision() -> None:
    for path in SOURCES + HEADERS:
        assert kernel_source(".", path) == path.read_text()
    committed = kernel_source("HEAD", SOURCES[0])
    assert "TORCH_LIBRARY" in committed
