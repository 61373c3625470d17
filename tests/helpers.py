"""Tiny random Hugging Face checkpoints built with `transformers` (test-only dependency),
and the one rule for a tool a test needs but the machine lacks (`require_tool`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from app.tokenizer import Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Inference turns a trained model into answers: embed, attend, project, softmax.",
    "Unicode survives the trip: café, naïve, 東京, Ελληνικά, emoji 🦊🚀 and ünïcödé.",
    "import os\nfor name in os.listdir('.'):\n    if name.endswith('.py'):\n        print(name)\n",
    "A language model predicts the next token from the tokens before it.",
] * 4

# name -> (transformers class name, config class name, config kwargs)
ARCHS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config",
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "llama_gqa_llama3": ("LlamaForCausalLM", "LlamaConfig",
                         dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=96,
                              max_position_embeddings=256, rope_theta=500000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 32})),
    "llama_linear_tied_mqa": ("LlamaForCausalLM", "LlamaConfig",
                              dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=1, intermediate_size=96,
                                   max_position_embeddings=256, tie_word_embeddings=True,
                                   rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config",
              dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256,
                   tie_word_embeddings=False)),
    "mistral": ("MistralForCausalLM", "MistralConfig",
                dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256,
                     sliding_window=None)),
}

CLASSIFIERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2_cls": ("GPT2ForSequenceClassification", "GPT2Config",
                 dict(ARCHS["gpt2"][2], num_labels=3,
                      id2label={0: "negative", 1: "neutral", 2: "positive"})),
    "llama_cls_multilabel": ("LlamaForSequenceClassification", "LlamaConfig",
                             dict(ARCHS["llama_gqa_llama3"][2], num_labels=4,
                                  problem_type="multi_label_classification")),
}

CAUSAL_LMS = list(ARCHS)


def build_hf_checkpoint(
    name: str, directory: Path, tokenizer: Tokenizer, seed: int = 0, **overrides: Any
) -> Any:
    """Save a random `transformers` model (and our tokenizer) to `directory`; return it."""
    import transformers

    cls_name, cfg_name, kwargs = {**ARCHS, **CLASSIFIERS}[name]
    special = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_ids[0],
        "pad_token_id": tokenizer.pad_id,
    }
    config = getattr(transformers, cfg_name)(
        vocab_size=tokenizer.vocab_size, initializer_range=0.1, **special, **{**kwargs, **overrides}
    )
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).eval()
    model.save_pretrained(directory)
    tokenizer.save(directory)
    return model


def in_ci() -> bool:
    """CI sets CI=true (GitHub Actions, GitLab and others do); the Makefile's `tools`
    target reads the same variable."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require_tool(name: str, available: bool, how_to_get: str) -> None:
    """The one rule for a test that needs a tool (a program, a package, data) this machine
    may lack: when it is missing, skip with the reason locally (pytest's -ra summary, on by
    default in pyproject.toml, prints it), and fail naming the tool under CI=true, where a
    skipped check would leave the run green without having checked anything."""
    # Hidden from tracebacks, so the -ra summary names the calling test's line, not this.
    __tracebackhide__ = True
    if available:
        return
    reason = f"{name} is missing: {how_to_get}"
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool fails the run)", pytrace=False)
    # allow_module_level: also usable at import time of a test module.
    pytest.skip(reason, allow_module_level=True)


def cpp_compiler() -> str | None:
    """The C++ compiler torch's builders would run (inductor and cpp_extension read CXX,
    else look for g++), or None."""
    named = os.environ.get("CXX")
    candidates = [named] if named else ["g++", "c++", "clang++"]
    return next((path for c in candidates if (path := shutil.which(c))), None)


def require_cpp_compiler() -> None:
    """The one rule for a missing C++ compiler (torch.compile's inductor and the quantized
    kernels in app/kernels/quant_linear.cpp both need one). Only its absence is a missing
    tool: with a compiler present, a build that fails is the test's failure."""
    __tracebackhide__ = True
    require_tool("a C++ compiler", cpp_compiler() is not None,
                 "install Debian's g++ (or set CXX): torch.compile and the C++ kernels "
                 "build with it")



def require_cpp_kernels(compiled: bool = False) -> None:
    """For a test that needs C++ kernels built here: the compiler rule above, then, with a
    compiler present, kernels that do not build fail the test. With `compiled`:
    torch.compile's kernels (inductor); else ours (app/kernels/quant_linear.cpp)."""
    __tracebackhide__ = True
    require_cpp_compiler()
    if compiled:
        from app.modeling.compile import compiler_problem

        problem = compiler_problem()
        assert problem is None, f"torch.compile cannot build kernels here: {problem}"
    else:
        from app.kernels.build import quant_extension

        module, why = quant_extension()
        assert module is not None, f"the C++ kernels do not build here: {why}"
