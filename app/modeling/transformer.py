"""A decoder-only transformer, read top to bottom: embedding -> N x (attention, MLP) -> norm.

One module layout serves both families; the config decides the parts:

             GPT-2                          Llama family (Llama, Qwen2, Mistral)
  position   learned table (pos_embed)      rotary, applied to q and k
  norm       LayerNorm (weight + bias)      RMSNorm (weight)
  MLP        fc -> GELU -> proj             gate_up -> SiLU(gate) * up -> down
  attention  fused qkv, nh == nkv           fused qkv, nkv <= nh (grouped-query)

q, k and v come out of one fused projection (and SwiGLU's gate and up out of another) so
a forward step is one matrix multiply where the checkpoint has two or three; the loader
(`app.modeling.weights`) fuses Hugging Face tensors into this layout and splits them back.

The model never owns a KV cache: `forward` takes an attention backend
(`app.modeling.attention`) that knows where earlier tokens' keys and values live.

Each block is two pieces around attention, `pre_attention` (norm, qkv, rotary) and
`post_attention` (output projection, residual, norm, MLP, residual), so that the dense
math can be compiled while attention, whose shape changes with every batch, stays
outside the graph (vLLM's piecewise compilation). `Transformer.ops` says which versions
run: plain eager methods by default, or compiled ones (`app.modeling.compile`), which
every layer shares because they take the block as an argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.modeling.attention import AttentionBackend, DenseCausalAttention
from app.modeling.config import ConfigError, ModelConfig, Task
from app.modeling.heads import ClassificationHead, LMHead
from app.modeling.lora import LayerLora, LoraStep, fused_sizes, lora_delta
from app.modeling.rope import apply_rope, inverse_frequencies, rope_cos_sin

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 whatever the weights' dtype, as the reference does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.family == "gpt2":
        return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
    return RMSNorm(cfg.hidden_size, cfg.norm_eps)


def dense(x: Tensor, layer: nn.Module, gemv: bool = False) -> Tensor:
    """x (..., in) -> (..., out) through `layer`: an `nn.Linear`, or a module that
    replaced one (quantized, prepacked) with the same `forward(x)`. With `gemv` (set only
    when compiled, for a few rows, on a CPU where it was measured faster) a product with
    float weights is written as multiply-and-reduce: inductor turns it into one vectorised
    pass over the weights, which streams them at close to memory bandwidth, where a BLAS
    matrix-vector call reaches about half. The caller decides from the row count, so the
    compiled graph never branches on a shape."""
    if gemv and isinstance(layer, nn.Linear):
        y = (x.float()[..., None, :] * layer.weight.float()).sum(-1).to(x.dtype)
        return y if layer.bias is None else y + layer.bias
    return cast(Tensor, layer(x))


class Attention(nn.Module):
    """The projections around attention; attention itself is the backend's."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, (self.nh + 2 * self.nkv) * self.hd, bias=cfg.qkv_bias)
        self.o = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=cfg.o_bias)
        self.lora_parts = fused_sizes(cfg)["qkv"][0]  # q|k|v's projections, for LoRA

    def project(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, gemv: bool,
                lora: LayerLora | None = None) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        qkv = dense(x, self.qkv, gemv)
        if lora is not None:
            qkv = qkv + lora_delta(x, lora.qkv_a, lora.qkv_b, lora.mask, gemv,
                                   self.lora_parts, lora.slots)
        q, k, v = qkv.split(
            [self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], -1)
        q = q.view(B, T, self.nh, self.hd)  # (B, T, nh, hd)
        k = k.view(B, T, self.nkv, self.hd)  # (B, T, nkv, hd)
        v = v.view(B, T, self.nkv, self.hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.family != "gpt2"
        self.act = ACTIVATIONS[cfg.activation]
        width = cfg.intermediate_size * (2 if self.gated else 1)
        self.up = nn.Linear(cfg.hidden_size, width, bias=cfg.mlp_bias)  # fc, or gate|up
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.lora_parts = fused_sizes(cfg)["up"][0]  # gate|up's projections, for LoRA

    def forward(self, x: Tensor, gemv: bool = False, lora: LayerLora | None = None) -> Tensor:
        h = dense(x, self.up, gemv)
        if lora is not None:
            h = h + lora_delta(x, lora.up_a, lora.up_b, lora.mask, gemv, self.lora_parts,
                               lora.slots)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        y = dense(h, self.down, gemv)
        if lora is not None:
            y = y + lora_delta(h, lora.down_a, lora.down_b, lora.mask, gemv, None, lora.slots)
        return y


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def pre_attention(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, gemv: bool = False,
                      lora: LayerLora | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, H) -> q (B, T, nh, hd), k and v (B, T, nkv, hd). With `lora`, each
        token's adapter delta is added to the products (app.modeling.lora)."""
        return self.attn.project(self.attn_norm(x), rope, gemv, lora)

    def post_attention(self, x: Tensor, y: Tensor, gemv: bool = False,
                       lora: LayerLora | None = None) -> Tensor:
        """x (B, T, H) and attention output y (B, T, nh, hd) -> the block's output."""
        B, T, _ = x.shape
        y = y.reshape(B, T, -1)
        o = dense(y, self.attn.o, gemv)
        if lora is not None:
            o = o + lora_delta(y, lora.o_a, lora.o_b, lora.mask, gemv, None, lora.slots)
        x = x + o
        return x + self.mlp(self.mlp_norm(x), gemv, lora)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, attn: AttentionBackend
    ) -> Tensor:
        q, k, v = self.pre_attention(x, rope)
        return self.post_attention(x, attn(self.attn.layer, q, k, v))


def lm_logits(model: Transformer, hidden: Tensor, gemv: bool = False) -> Tensor:
    if model.lm_head is None:
        raise ConfigError("this checkpoint has a classification head, not an LM head")
    return model.lm_head(hidden, model.embed, gemv)


@dataclass(frozen=True)
class ForwardOps:
    """Which implementation of each dense piece the forward pass calls. Every function
    takes its module first, so one compiled version serves every layer."""

    pre_attention: Callable[..., tuple[Tensor, Tensor, Tensor]] = Block.pre_attention
    post_attention: Callable[..., Tensor] = Block.post_attention
    logits: Callable[..., Tensor] = lm_logits
    gemv_rows: int = 0  # row counts up to which the compiled multiply-and-reduce is used
    compiled: bool = False

    def mark_dynamic(self, dim: int, *tensors: Tensor) -> bool:
        """Whether a product of `rows` rows uses the multiply-and-reduce form. Row counts
        above it share one graph with a symbolic row dimension; below, each count has
        its own graph (a handful), so the graph never branches on a symbolic size."""
        rows = tensors[0].shape[dim]
        gemv = rows <= self.gemv_rows
        if self.compiled and not gemv and rows > 1:
            for t in tensors:
                torch._dynamo.mark_dynamic(t, dim)
        return gemv


EAGER = ForwardOps()


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation {cfg.activation!r} is not supported "
                f"(supported: {', '.join(sorted(ACTIVATIONS))})"
            )
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_embed = (
            nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size) if cfg.rope is None else None
        )
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = make_norm(cfg)
        self.lm_head: LMHead | None = None
        self.score: ClassificationHead | None = None
        if cfg.task is Task.CAUSAL_LM:
            self.lm_head = LMHead(cfg.hidden_size, cfg.vocab_size, tied=cfg.tie_word_embeddings)
        else:
            self.score = ClassificationHead(cfg.hidden_size, cfg.num_labels, cfg.problem_type)
        # Not a registered buffer: a meta-device build must not need it, and it is cheap
        # to recompute wherever the weights land (see `init_rope`).
        self.inv_freq: Tensor | None = None
        self.ops = EAGER  # see app.modeling.compile
        self.quantization = "none"  # see app.modeling.quantized_model
        self.quantization_group_size = 0

    def blocks(self) -> list[Block]:
        return [block for block in self.layers if isinstance(block, Block)]

    def init_rope(self, device: torch.device) -> None:
        """(Re)compute the rotary frequencies on `device`; call after moving the weights."""
        if self.config.rope is not None:
            self.inv_freq = inverse_frequencies(self.config.rope, self.config.head_dim, device)

    def forward(
        self, input_ids: Tensor, positions: Tensor, attn: AttentionBackend | None = None,
        lora: LoraStep | None = None,
    ) -> Tensor:
        """input_ids, positions (B, T) -> hidden states (B, T, H) after the final norm.
        `lora`: per-token adapters (app.modeling.lora); None runs the plain graphs."""
        attn = attn or DenseCausalAttention()
        ops = self.ops
        x = self.embed(input_ids)  # (B, T, H)
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        else:
            if self.inv_freq is None or self.inv_freq.device != x.device:
                self.init_rope(x.device)
            inv_freq = self.inv_freq
            if inv_freq is None:
                raise RuntimeError("rotary frequencies missing after init_rope")
            rope = rope_cos_sin(positions, inv_freq, x.dtype)
        # a one-adapter mask follows the tokens (B, T, 1); rows per slot (max_loras, n)
        # have their own length, symbolic above one (one graph for every n > 1)
        per_token: tuple[Tensor, ...] = ()
        if lora is not None and lora.mask.dim() == 3:
            per_token = (lora.mask,) if lora.slots is None else (lora.mask, lora.slots)
        gemv = ops.mark_dynamic(1, x, *(rope or ()), *per_token)
        if ops.compiled and lora is not None and lora.mask.dim() == 2 and lora.mask.shape[1] > 1:
            torch._dynamo.mark_dynamic(lora.mask, 1)
        for layer, block in enumerate(self.layers):
            if lora is None:
                q, k, v = ops.pre_attention(block, x, rope, gemv)
                y = attn(layer, q, k, v)  # (B, T, nh, hd)
                ops.mark_dynamic(1, y)
                x = ops.post_attention(block, x, y, gemv)
            else:
                adapters = lora.layer(layer)
                q, k, v = ops.pre_attention(block, x, rope, gemv, adapters)
                y = attn(layer, q, k, v)
                ops.mark_dynamic(1, y)
                x = ops.post_attention(block, x, y, gemv, adapters)
        return self.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., H) -> (..., vocab) next-token logits."""
        ops = self.ops
        gemv = ops.mark_dynamic(0, hidden) if hidden.dim() == 2 else False
        return ops.logits(self, hidden, gemv)

    def classify(self, pooled: Tensor) -> Tensor:
        """(..., H) hidden state of each sequence's last token -> (..., num_labels) logits."""
        if self.score is None:
            raise ConfigError("this checkpoint has an LM head, not a classification head")
        return self.score(pooled)

    def causal_lm_logits(self, input_ids: Tensor) -> Tensor:
        """Reference full forward: (B, T) right-padded ids -> (B, T, vocab) logits."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        return self.logits(self.forward(input_ids, positions))

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 style initialisation for training from scratch (std 0.02, scaled residuals)."""
        std = 0.02
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                else:
                    nn.init.ones_(p)
                continue
            scale = residual_std if name.endswith(("attn.o.weight", "mlp.down.weight")) else std
            with torch.no_grad():
                p.normal_(0.0, scale, generator=generator)
