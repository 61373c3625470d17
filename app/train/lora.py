"""Training-time LoRA: frozen linear layers with trainable low-rank updates beside them.

    y = W x + scaling * B (A dropout(x))      A (r, in) random, B (out, r) zero at the start

Our model fuses projections the checkpoint keeps apart (q|k|v, gate|up), and PEFT puts
one LoRA on each checkpoint module. So a fused linear gets one LoRA per part, and the
parts' updates are concatenated along the output: exactly what PEFT computes on the
unfused modules, and the saved A and B are PEFT's own tensors, with no conversion.

This is the plain module wrapper for training (one adapter, autograd). Serving many
adapters in one batch is app.modeling.lora's job.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from app.checkpoint.lora_save import save_peft_adapter
from app.modeling.transformer import Transformer
from app.modeling.weights import weight_plan

# Our linear modules inside each block that LoRA may wrap ("all linear projections").
FUSED_LINEARS = ("attn.qkv", "attn.o", "mlp.up", "mlp.down")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    use_rslora: bool = False
    dropout: float = 0.0
    # Checkpoint module names (q_proj, c_attn, ...); empty: every linear projection.
    target_modules: tuple[str, ...] = ()

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023), as peft."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


class LoraPart(nn.Module):
    """One checkpoint module's A and B (peft's lora_A / lora_B), unscaled."""

    def __init__(self, in_features: int, out_features: int, rank: int, dropout: float,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        # peft's default init: A as nn.Linear's (Kaiming uniform with a=sqrt(5), i.e.
        # uniform in +-1/sqrt(in)), B zero, so the adapter starts as the base model.
        bound = 1 / math.sqrt(in_features)
        self.lora_A = nn.Parameter(
            torch.empty(rank, in_features).uniform_(-bound, bound, generator=generator))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return (self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t()


class LoraLinear(nn.Module):
    """A frozen (possibly fused) linear plus one LoRA per targeted part of its output."""

    def __init__(self, base: nn.Linear, sizes: list[int], parts: list[LoraPart | None],
                 scaling: float) -> None:
        super().__init__()
        self.base = base
        self.sizes = sizes
        # Not registered here: the parts belong to the LoraModules that owns them (whose
        # state the trainer saves), so the base model's state_dict keeps its own keys.
        self._parts = parts
        self.scaling = scaling

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        if all(p is None for p in self._parts):
            return y
        deltas = [p(x) if p is not None else x.new_zeros(*x.shape[:-1], size)
                  for p, size in zip(self._parts, self.sizes, strict=True)]
        return y + torch.cat(deltas, dim=-1) * self.scaling


class LoraModules(nn.Module):
    """Everything trainable: the LoRA parts, keyed by checkpoint module name (dots become
    '/', which ModuleDict keys may not contain), and an optional trained head. This, not
    the whole model, is what the training loop optimises and checkpoints."""

    def __init__(self, settings: LoraSettings) -> None:
        super().__init__()
        self.settings = settings
        self.parts = nn.ModuleDict()
        self.heads = nn.ModuleDict()  # checkpoint module name -> module (modules_to_save)

    def add(self, module_name: str, part: LoraPart) -> None:
        self.parts[module_name.replace(".", "/")] = part

    def named_parts(self) -> Iterator[tuple[str, LoraPart]]:
        for key, part in self.parts.items():
            assert isinstance(part, LoraPart)
            yield key.replace("/", "."), part


def available_targets(model: Transformer) -> list[str]:
    """Checkpoint module names LoRA can target in this model (q_proj ..., or c_attn ...)."""
    plan = weight_plan(model.config)
    names = {src_name.removesuffix(".weight").rsplit(".", 1)[-1]
             for ours, src in plan.items() if ours.startswith("layers.")
             and ours.removesuffix(".weight").split(".", 2)[-1] in FUSED_LINEARS
             for src_name in src.names}
    return sorted(names)


def attach_lora(model: Transformer, settings: LoraSettings,
                generator: torch.Generator | None = None) -> LoraModules:
    """Freeze `model` and wrap its targeted linears with LoRA; return the trainable parts.

    Seeded by `generator` (else torch's global RNG) for reproducible A initialisation."""
    known = available_targets(model)
    targets = set(settings.target_modules or known)
    unknown = sorted(targets - set(known))
    if unknown:
        raise ValueError(f"unknown LoRA target modules {unknown} for a "
                         f"{model.config.architecture} base; choose from {known}")
    model.requires_grad_(False)
    plan = weight_plan(model.config)
    lora = LoraModules(settings)
    for i, block in enumerate(model.blocks()):
        for path in FUSED_LINEARS:
            owner_name, attr = path.split(".")
            owner = getattr(block, owner_name)
            linear = getattr(owner, attr)
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"layer {i} {path} is {type(linear).__name__}, not a float "
                                 "linear: train LoRA on an unquantized base")
            src = plan[f"layers.{i}.{path}.weight"]
            sizes = [s or linear.out_features for s in src.sizes]
            parts: list[LoraPart | None] = []
            for name, size in zip(src.names, sizes, strict=True):
                module = name.removesuffix(".weight")
                if module.rsplit(".", 1)[-1] not in targets:
                    parts.append(None)
                    continue
                part = LoraPart(linear.in_features, size, settings.rank, settings.dropout,
                                generator)
                part.to(linear.weight.device)
                lora.add(module, part)
                parts.append(part)
            if any(p is not None for p in parts):
                setattr(owner, attr, LoraLinear(linear, sizes, parts, settings.scaling))
    return lora


def save_lora(lora: LoraModules, model: Transformer, directory: Path, base_name: str) -> None:
    """The trained parts (and heads) as a PEFT adapter."""
    s = lora.settings
    heads = {f"{name}.{key}": t for name, head in lora.heads.items()
             for key, t in head.state_dict().items()}
    save_peft_adapter(
        directory, model.config,
        {name: (part.lora_A, part.lora_B) for name, part in lora.named_parts()},
        base_model_name_or_path=base_name, rank=s.rank, alpha=s.alpha,
        use_rslora=s.use_rslora, dropout=s.dropout, modules_to_save=heads)
