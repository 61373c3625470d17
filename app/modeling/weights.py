"""How our parameter names map to Hugging Face tensor names, per family.

Each of our parameters is built from one or more checkpoint tensors, each optionally
transposed (GPT-2 stores Conv1D weights as (in, out)), concatenated along dim 0
(fused q|k|v and gate|up). The same plan, run backwards, splits our tensors again for
saving, so every checkpoint we write loads in `transformers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.modeling.config import ModelConfig, Task


@dataclass(frozen=True)
class Source:
    names: tuple[str, ...]  # checkpoint tensor names, concatenated along dim 0 in this order
    sizes: tuple[int, ...]  # each part's size along our dim 0
    transpose: bool = False  # checkpoint stores the (in, out) transpose (GPT-2 Conv1D)


WeightPlan = dict[str, Source]


def _one(name: str, size: int = 0, transpose: bool = False) -> Source:
    return Source((name,), (size,), transpose)


def _gpt2_plan(cfg: ModelConfig) -> WeightPlan:
    H, inner = cfg.hidden_size, cfg.intermediate_size
    t = "transformer."
    plan: WeightPlan = {
        "embed.weight": _one(t + "wte.weight"),
        "pos_embed.weight": _one(t + "wpe.weight"),
        "norm.weight": _one(t + "ln_f.weight"),
        "norm.bias": _one(t + "ln_f.bias"),
    }
    for i in range(cfg.num_layers):
        h, o = f"{t}h.{i}.", f"layers.{i}."
        plan |= {
            o + "attn_norm.weight": _one(h + "ln_1.weight"),
            o + "attn_norm.bias": _one(h + "ln_1.bias"),
            o + "attn.qkv.weight": _one(h + "attn.c_attn.weight", 3 * H, transpose=True),
            o + "attn.qkv.bias": _one(h + "attn.c_attn.bias", 3 * H),
            o + "attn.o.weight": _one(h + "attn.c_proj.weight", H, transpose=True),
            o + "attn.o.bias": _one(h + "attn.c_proj.bias", H),
            o + "mlp_norm.weight": _one(h + "ln_2.weight"),
            o + "mlp_norm.bias": _one(h + "ln_2.bias"),
            o + "mlp.up.weight": _one(h + "mlp.c_fc.weight", inner, transpose=True),
            o + "mlp.up.bias": _one(h + "mlp.c_fc.bias", inner),
            o + "mlp.down.weight": _one(h + "mlp.c_proj.weight", H, transpose=True),
            o + "mlp.down.bias": _one(h + "mlp.c_proj.bias", H),
        }
    return plan


def _llama_plan(cfg: ModelConfig) -> WeightPlan:
    q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    inner = cfg.intermediate_size
    m = "model."
    plan: WeightPlan = {
        "embed.weight": _one(m + "embed_tokens.weight"),
        "norm.weight": _one(m + "norm.weight"),
    }
    for i in range(cfg.num_layers):
        h, o = f"{m}layers.{i}.", f"layers.{i}."
        a = h + "self_attn."
        qkv = tuple(a + f"{p}_proj" for p in "qkv")
        plan |= {
            o + "attn_norm.weight": _one(h + "input_layernorm.weight"),
            o + "attn.qkv.weight": Source(
                tuple(n + ".weight" for n in qkv), (q_size, kv_size, kv_size)
            ),
            o + "attn.o.weight": _one(a + "o_proj.weight"),
            o + "mlp_norm.weight": _one(h + "post_attention_layernorm.weight"),
            o + "mlp.up.weight": Source(
                (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), (inner, inner)
            ),
            o + "mlp.down.weight": _one(h + "mlp.down_proj.weight"),
        }
        if cfg.qkv_bias:
            plan[o + "attn.qkv.bias"] = Source(
                tuple(n + ".bias" for n in qkv), (q_size, kv_size, kv_size)
            )
        if cfg.o_bias:
            plan[o + "attn.o.bias"] = _one(a + "o_proj.bias")
        if cfg.mlp_bias:
            plan[o + "mlp.up.bias"] = Source(
                (h + "mlp.gate_proj.bias", h + "mlp.up_proj.bias"), (inner, inner)
            )
            plan[o + "mlp.down.bias"] = _one(h + "mlp.down_proj.bias")
    return plan


PLANS: dict[str, Callable[[ModelConfig], WeightPlan]] = {
    "gpt2": _gpt2_plan,
    "llama": _llama_plan,
}

# Checkpoint tensors that carry no weights of ours: causal-mask buffers of old GPT-2
# exports and precomputed rotary frequencies.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")

# Prefixes a checkpoint may have dropped (a bare GPT2Model / LlamaModel export).
BODY_PREFIXES = ("transformer.", "model.")


def weight_plan(cfg: ModelConfig) -> WeightPlan:
    plan = PLANS[cfg.family](cfg)
    if cfg.task is Task.CAUSAL_LM and not cfg.tie_word_embeddings:
        plan["lm_head.weight"] = _one("lm_head.weight")
    if cfg.task is Task.SEQUENCE_CLASSIFICATION:
        plan["score.weight"] = _one("score.weight")
    return plan
