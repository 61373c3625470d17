"""Structured output inside the engine: masks hold for every completion of n > 1, and a
constrained sequence that is preempted and recomputed produces the same tokens as without
preemption (its matcher state follows its output tokens, which do not change)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.checkpoint import load_model
from app.engine.engine import Engine
from app.sampling_params import SamplingParams
from app.structured import (
    ConstraintCompiler,
    ConstraintSpec,
    ConstraintTooSlow,
    InvalidConstraint,
)
from app.structured_grammar import close_objects
from app.tokenizer import Tokenizer
from tests.engine.conftest import make_engine, run
from tests.engine.test_engine import prompts

PATTERN = r"[a-z]{2,6}( [a-z]{2,6}){3,8}\."


def test_constrained_output_survives_preemption(hf_checkpoint: Any,
                                                tokenizer: Tokenizer) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    loaded = load_model(directory, dtype="float32", device="cpu")
    constraint = ConstraintCompiler(tokenizer, loaded.config.vocab_size).compile(
        ConstraintSpec("regex", PATTERN, "guided_regex"))
    vocab = loaded.config.vocab_size
    target = prompts(vocab, [9], seed=1)[0]
    params = SamplingParams(max_tokens=60, temperature=1.0, seed=11, n=3)

    async def generate(engine: Engine, others: int) -> tuple[list[list[int]], int]:
        crowd = [engine.generate(p, SamplingParams(max_tokens=80, ignore_eos=True))
                 for p in prompts(vocab, [30] * others, seed=2)]
        stream = engine.submit_batch([target], params, constraint=constraint)[0]

        async def collect() -> Any:
            final = None
            async for out in stream:
                final = out if final is None else final
                if final is not out:
                    final.merge(out)
            return final

        results = await asyncio.gather(collect(), *crowd)
        out = results[0]
        return [c.token_ids for c in out.completions], engine.stats().preemptions

    async def body() -> None:
        alone = make_engine(loaded, tokenizer)
        await alone.start()
        try:
            expected, _ = await generate(alone, 0)
        finally:
            await alone.shutdown()
        # 40 blocks of 4 tokens cannot hold 7 sequences of 110 tokens: some are preempted.
        tight = make_engine(loaded, tokenizer, num_kv_blocks=40)
        await tight.start()
        try:
            got, preemptions = await generate(tight, 6)
        finally:
            await tight.shutdown()
            tight.blocks.check_invariants()
        assert preemptions > 0
        assert got == expected
        for ids in got:
            text = tokenizer.decode(ids)
            assert re.fullmatch(PATTERN, text), text

    run(body())


DEFAULT_LM = Path(__file__).resolve().parents[2] / "models" / "default-lm"


@pytest.fixture(scope="module")
def compiler() -> Iterator[ConstraintCompiler]:
    compiler = ConstraintCompiler(Tokenizer.from_dir(DEFAULT_LM), 8192)
    yield compiler
    compiler.close()  # its compile check's child process


def accepts(compiler: ConstraintCompiler, spec: ConstraintSpec, text: str) -> bool:
    """Whether the constraint's matcher takes `text` (a prefix of an output), in the
    default-lm's tokens."""
    matcher = compiler.compile(spec).new_matcher()
    ids = Tokenizer.from_dir(DEFAULT_LM).encode(text, add_special_tokens=False)
    return all(matcher.consume_token(i) for i in ids)


NESTED = {"type": "object", "properties": {
    "a": {"type": "integer"},
    "inner": {"type": "object", "properties": {"x": {"type": "integer"}}},
    "list": {"type": "array", "items": {"type": "object", "properties": {"y": {}}}},
    "either": {"anyOf": [{"type": "object", "properties": {"z": {}}}, {"type": "null"}]},
    "ref": {"$ref": "#/$defs/thing"}},
    "$defs": {"thing": {"type": "object", "properties": {"w": {}}}}}


@pytest.mark.parametrize("listed,unlisted", [
    ('{"a":1,"inner', '{"a":1,"zz'), ('{"inner":{"x', '{"inner":{"q'),
    ('{"list":[{"y', '{"list":[{"q'), ('{"either":{"z', '{"either":{"q'),
    ('{"ref":{"w', '{"ref":{"q')])
def test_strict_json_schema_rejects_unlisted_keys_at_every_depth(
        compiler: ConstraintCompiler, listed: str, unlisted: str) -> None:
    schema = json.dumps(NESTED)
    strict = ConstraintSpec("json_schema", schema, "response_format", strict=True)
    assert accepts(compiler, strict, listed)
    assert not accepts(compiler, strict, unlisted)
    # Without strict JSON Schema's default holds: other keys are allowed.
    assert accepts(compiler, ConstraintSpec("json_schema", schema, "x"), unlisted)


def test_strict_keeps_what_the_schema_says() -> None:
    given = {"type": "object", "properties": {"a": {}}, "additionalProperties": True,
             "patternProperties": {"^x": {"type": "object"}}}
    closed = close_objects(given)
    assert closed["additionalProperties"] is True  # said: kept
    assert closed["patternProperties"]["^x"]["additionalProperties"] is False
    assert close_objects(True) is True and given["patternProperties"]["^x"] == {
        "type": "object"}  # the input is not changed


def test_boolean_json_schemas_compile(compiler: ConstraintCompiler) -> None:
    anything = ConstraintSpec("json_schema", "true", "guided_json")
    assert all(accepts(compiler, anything, t) for t in ('"hi"', "[1,{}]", "{}", "3.5"))
    with pytest.raises(InvalidConstraint, match="`false` admits no value") as refused:
        compiler.compile(ConstraintSpec("json_schema", "false", "guided_json"))
    assert refused.value.param == "guided_json"
    nested = ConstraintSpec("json_schema", json.dumps({
        "type": "object", "properties": {"a": True, "b": False}}), "x")
    assert accepts(compiler, nested, '{"a":[1]')
    assert not accepts(compiler, nested, '{"b":')


def test_compiled_constraints_are_cached_by_canonical_source(
        compiler: ConstraintCompiler) -> None:
    before = compiler.cached()
    one = compiler.compile(ConstraintSpec("regex", "[ab]{3}c", "guided_regex"))
    other = compiler.compile(ConstraintSpec("regex", "[ab]{3}c", "structured_outputs.regex"))
    assert other.template is one.template and other.spec.param == "structured_outputs.regex"
    spaced = compiler.compile(ConstraintSpec("json_schema", '{"type": "integer"}', "a"))
    tight = compiler.compile(ConstraintSpec("json_schema", '{"type":"integer"}', "b"))
    assert spaced.template is tight.template
    assert compiler.cached() == before + 2


def test_a_compile_over_the_limit_is_killed() -> None:
    slow = ConstraintCompiler(Tokenizer.from_dir(DEFAULT_LM), 8192, limit_s=0.5)
    schema = {"type": "object",
              "properties": {f"p{i}": {"type": "integer"} for i in range(8000)}}
    try:
        with pytest.raises(ConstraintTooSlow, match=r"longer than 0\.5 s") as refused:
            slow.compile(ConstraintSpec("json_schema", json.dumps(schema), "guided_json"))
        assert refused.value.param == "guided_json"
        assert slow.cached() == 0
    finally:
        slow.close()
