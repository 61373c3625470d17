"""Tokenizers carrying each model family's real chat template (tests/data/chat_templates,
SOURCES.md there says where each comes from) and its marker tokens, on top of the test
suite's small BPE vocabulary: the tokenizer half of a tiny checkpoint of that family."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from app.tokenizer import Tokenizer

TEMPLATES = Path(__file__).parent.parent / "data" / "chat_templates"
LONG_CONTEXT = 2048


@dataclass(frozen=True)
class Family:
    template: str  # file in tests/data/chat_templates
    tool_parser: str  # the parser `auto` must choose
    bos: str | None
    eos: str
    special: tuple[str, ...]  # added as special tokens
    plain: tuple[str, ...] = ()  # added as non-special tokens (Qwen's <tool_call>)
    arch: str = "qwen2"  # tests/helpers.py ARCHS entry for a whole checkpoint


FAMILIES = {
    "qwen2_5": Family("qwen2_5_instruct.jinja", "hermes", None, "<|im_end|>",
                      ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                      ("<tool_call>", "</tool_call>")),
    "llama3_1": Family("llama3_1_instruct.jinja", "llama3_json", "<|begin_of_text|>",
                       "<|eot_id|>", ("<|begin_of_text|>", "<|start_header_id|>",
                                      "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
                                      "<|python_tag|>"), arch="llama_gqa_llama3"),
    "mistral_v0_3": Family("mistral_instruct_v0_3.jinja", "mistral", "<s>", "</s>",
                           ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]",
                            "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                            "[/TOOL_RESULTS]"), arch="mistral"),
    "qwen3": Family("qwen3.jinja", "hermes", None, "<|im_end|>",
                    ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                    ("<tool_call>", "</tool_call>", "<think>", "</think>")),
    "deepseek_r1": Family("deepseek_r1_distill_qwen.jinja", "hermes",
                          "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                          ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                           "<｜Assistant｜>"), ("<think>", "</think>")),
}


def save_family_tokenizer(name: str, base: Tokenizer, directory: Path) -> Tokenizer:
    """Write `base`'s vocabulary plus the family's tokens and template to `directory`."""
    family = FAMILIES[name]
    backend = HFTokenizer.from_str(base.backend.to_str())
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in family.special])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.plain])
    tokenizer = Tokenizer(backend=backend, bos_token=family.bos, eos_token=family.eos,
                          pad_token=base.pad_token,
                          chat_template=(TEMPLATES / family.template).read_text())
    tokenizer.save(directory)
    # tokenizer_config.json as a real checkpoint has it (transformers reads the same file)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["clean_up_tokenization_spaces"] = False
    config_file.write_text(json.dumps(config, indent=2))
    return Tokenizer.from_dir(directory)


def build_family_checkpoint(name: str, base: Tokenizer, directory: Path, seed: int = 0) -> Path:
    """A tiny random checkpoint of the family's architecture with its tokenizer and
    template (transformers builds the weights; test-only). Its context is long enough for
    a prompt with tools in the test suite's small vocabulary."""
    from tests.helpers import build_hf_checkpoint

    tokenizer = save_family_tokenizer(name, base, directory)
    build_hf_checkpoint(FAMILIES[name].arch, directory, tokenizer, seed=seed,
                        max_position_embeddings=LONG_CONTEXT)
    save_family_tokenizer(name, base, directory)  # build_hf_checkpoint saved it without extras
    return directory
