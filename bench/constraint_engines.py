"""llguidance against xgrammar: mask time per token at an 8k and a 50k vocabulary, and
which JSON Schema features each compiles. The measurement behind the choice of
llguidance (docs/PERFORMANCE.md, "Structured output").

    python -m bench.constraint_engines [--tokenizer-50k DIR]

xgrammar is optional (not a dependency of the project: it needs triton at run time on
Linux); put it on PYTHONPATH to include it, e.g. `pip install --no-deps --target DIR
xgrammar apache-tvm-ffi`. The 50k tokenizer: any tokenizer.json of ~50k tokens (the
default is a byte-level BPE of 50,257 tokens trained here on the fortunes data, as GPT-2's
vocabulary cannot be downloaded offline).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import cpu_info, cpu_line

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "mood": {"enum": ["happy", "sad", "meh"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    "address": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}},
    "required": ["name", "age", "mood", "tags", "address"], "additionalProperties": False}
FEATURES: dict[str, dict[str, Any]] = {
    "anyOf": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "oneOf": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
    "$ref/$defs": {"$defs": {"p": {"type": "integer"}}, "type": "object",
                   "properties": {"a": {"$ref": "#/$defs/p"}}},
    "pattern": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2}$"},
    "format: date-time": {"type": "string", "format": "date-time"},
    "format: email": {"type": "string", "format": "email"},
    "const": {"const": "fixed"},
    "minItems/maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                          "maxItems": 4},
    "exclusiveMinimum": {"type": "number", "exclusiveMinimum": 0},
    "multipleOf": {"type": "integer", "multipleOf": 5},
    "recursive $ref": {"$defs": {"n": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}}, "$ref": "#/$defs/n"},
    "allOf": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                        {"required": ["a"]}]},
    "patternProperties": {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
    "boolean subschemas": {"type": "object", "properties": {"a": True, "b": False}},
}


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer_json: str, vocab: int, eos: int) -> None:
        from llguidance import LLMatcher, LLTokenizer

        self.LLMatcher = LLMatcher
        self.tok = LLTokenizer(tokenizer_json, n_vocab=vocab, eos_token=eos)

    def compile(self, schema: dict[str, Any]) -> Any:
        from app.structured_grammar import json_schema_grammar  # the server's own path

        grammar = json_schema_grammar(json.dumps(schema), strict=False)
        is_error, messages = self.LLMatcher.validate_grammar_with_warnings(grammar, self.tok)
        if is_error:
            raise ValueError(messages[0] if messages else "rejected")
        return grammar

    def matcher(self, compiled: Any) -> Any:
        return self.LLMatcher(self.tok, compiled, log_level=0)

    @staticmethod
    def mask(m: Any, vocab: int) -> list[int]:
        bits = m.compute_bitmask()
        return [i for i in range(vocab) if bits[i // 8] >> (i % 8) & 1]

    @staticmethod
    def advance(m: Any, token: int) -> bool:
        m.consume_token(token)
        return not m.is_stopped()


class XGrammar:
    name = "xgrammar"

    def __init__(self, directory: Path, vocab: int) -> None:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast

        self.xgr = xgr
        hf = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"),
                                     eos_token="<|endoftext|>")
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab)
        self.compiler = xgr.GrammarCompiler(info)
        self.vocab = vocab
        self.bitmask = xgr.allocate_token_bitmask(1, vocab)

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, m: Any, vocab: int) -> list[int]:
        m.fill_next_token_bitmask(self.bitmask)
        words = self.bitmask[0].tolist()
        return [i for i in range(vocab) if (words[i // 32] >> (i % 32)) & 1]

    @staticmethod
    def advance(m: Any, token: int) -> bool:
        m.accept_token(token)
        return not m.is_terminated()


def walk(engine: Any, vocab: int, seed: int = 0) -> tuple[float, float, int]:
    """(compile ms, median mask us, tokens) over a random walk through SCHEMA."""
    start = time.perf_counter()
    compiled = engine.compile(SCHEMA)
    compile_ms = (time.perf_counter() - start) * 1e3
    m = engine.matcher(compiled)
    rng = random.Random(seed)
    times = []
    for _ in range(200):
        start = time.perf_counter()
        if engine.name == "llguidance":
            bits = m.compute_bitmask()
            times.append(time.perf_counter() - start)
            allowed = [i for i in range(vocab) if bits[i // 8] >> (i % 8) & 1]
        else:
            m.fill_next_token_bitmask(engine.bitmask)
            times.append(time.perf_counter() - start)
            words = engine.bitmask[0].tolist()
            allowed = [i for i in range(vocab) if (words[i // 32] >> (i % 32)) & 1]
        if not allowed or not engine.advance(m, rng.choice(allowed)):
            break
    return compile_ms, statistics.median(times[1:] or times) * 1e6, len(times)


def coverage(engine: Any) -> dict[str, bool]:
    result = {}
    for name, schema in FEATURES.items():
        try:
            engine.compile(schema)
            result[name] = True
        except Exception:
            result[name] = False
    return result


def tokenizer_50k(out: Path) -> Path:
    from app.train.bpe import train_bpe
    from app.train.data import read_documents
    from app.train.fortunes import prepare

    data = out / "data"
    prepare(data)
    texts = read_documents([data / "lm" / "train.jsonl"])
    train_bpe(texts, vocab_size=50257, min_frequency=1).save(out / "tok50k")
    return out / "tok50k"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer-50k", type=Path)
    args = parser.parse_args()
    cpu = cpu_info()
    print(cpu_line(cpu))
    with tempfile.TemporaryDirectory() as tmp:
        big = args.tokenizer_50k or tokenizer_50k(Path(tmp))
        from app.tokenizer import Tokenizer

        print("| engine | vocab | compile ms | mask us/token (median) | tokens walked |")
        print("|---|---|---|---|---|")
        covered: dict[str, dict[str, bool]] = {}
        for directory in (ROOT / "models" / "default-lm", big):
            tok = Tokenizer.from_dir(directory)
            vocab = tok.vocab_size
            engines: list[Any] = [LLGuidance(tok.backend.to_str(), vocab, tok.eos_ids[0])]
            try:
                engines.append(XGrammar(directory, vocab))
            except ImportError as exc:
                print(f"(xgrammar not installed: {exc})")
            for engine in engines:
                compile_ms, mask_us, steps = walk(engine, vocab)
                print(f"| {engine.name} | {vocab} | {compile_ms:.1f} | {mask_us:.0f} | "
                      f"{steps} |")
                covered.setdefault(engine.name, coverage(engine))
        names = list(covered)
        print("\n| JSON Schema feature | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for feature in FEATURES:
            print(f"| {feature} | " + " | ".join("yes" if covered[n][feature] else "no"
                                                  for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
