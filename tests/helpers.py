"""Tiny random Hugging Face checkpoints built with `transformers` (test-only dependency)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
