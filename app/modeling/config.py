"""ModelConfig: one frozen description of a decoder-only transformer, built from a
Hugging Face `config.json` dict and written back to one.

Two families are covered: GPT-2 (learned positions, LayerNorm, GELU MLP) and the Llama
family (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention), which also
covers Qwen2 (q/k/v bias) and Mistral. Each family has a parser and a writer, found
through the registry dicts at the bottom of the file; nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class ConfigError(ValueError):
    """A config.json that names something we cannot build or honour."""


class Task(StrEnum):
    CAUSAL_LM = "causal_lm"
    SEQUENCE_CLASSIFICATION = "sequence_classification"


class ProblemType(StrEnum):
    SINGLE_LABEL = "single_label_classification"
    MULTI_LABEL = "multi_label_classification"
    REGRESSION = "regression"


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    # "default" | "linear" | "llama3"
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    model_type: str  # "gpt2" | "llama" | "qwen2" | "mistral"
    family: str  # "gpt2" | "llama": which module layout and weight names
    task: Task
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float
    activation: str  # key of modeling.transformer.ACTIVATIONS
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    rope: RopeConfig | None  # None: learned absolute positions (GPT-2)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # sequence classification only
    id2label: tuple[str, ...] = ()
    problem_type: ProblemType | None = None
    # the checkpoint's own dtype name ("float32", "bfloat16", ...), if it says
    torch_dtype: str | None = None
    # every key of the source config.json, so saving keeps what we do not model
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def max_model_len(self) -> int:
        """Longest sequence (prompt + generated) this model can attend over."""
        return self.max_position_embeddings

    @property
    def architecture(self) -> str:
        return ARCHITECTURE_NAMES[(self.model_type, self.task)]

    def with_task(
        self,
        task: Task,
        id2label: tuple[str, ...] = (),
        problem_type: ProblemType | None = None,
    ) -> ModelConfig:
        """The same body with another head (e.g. an LM body fine-tuned as a classifier)."""
        if task is Task.SEQUENCE_CLASSIFICATION and not id2label:
            raise ConfigError("a sequence-classification model needs at least one label")
        return replace(
            self,
            task=task,
            id2label=id2label,
            problem_type=problem_type
            if task is Task.SEQUENCE_CLASSIFICATION
            else None,
        )


# ---------------------------------------------------------------------------- parsing


def _require(raw: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    raise ConfigError(f"config.json has no {' / '.join(repr(k) for k in keys)}")


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _eos_ids(value: Any) -> tuple[int, ...]:
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    single = _int_or_none(value)
    return () if single is None else (single,)


def _labels(raw: dict[str, Any], task: Task) -> tuple[tuple[str, ...], ProblemType | None]:
    if task is not Task.SEQUENCE_CLASSIFICATION:
        return (), None
    id2label = raw.get("id2label")
    if id2label:
        try:
            pairs = sorted((int(k), str(v)) for k, v in id2label.items())
        except (AttributeError, ValueError) as exc:
            raise ConfigError("config.json id2label must map integer ids to names") from exc
        if [i for i, _ in pairs] != list(range(len(pairs))):
            raise ConfigError("config.json id2label ids must be 0..num_labels-1")
        labels = tuple(name for _, name in pairs)
    else:
        n = int(raw.get("num_labels", 2))
        labels = tuple(f"LABEL_{i}" for i in range(n))
    raw_problem = raw.get("problem_type")
    if raw_problem is None:
        problem = ProblemType.SINGLE_LABEL if len(labels) > 1 else ProblemType.REGRESSION
    else:
        try:
            problem = ProblemType(raw_problem)
        except ValueError as exc:
            supported = ", ".join(p.value for p in ProblemType)
            raise ConfigError(
                f"config.json problem_type {raw_problem!r} is not supported ({supported})"
            ) from exc
    return labels, problem


def _common(raw: dict[str, Any], task: Task) -> dict[str, Any]:
    labels, problem = _labels(raw, task)
    dtype = raw.get("dtype") or raw.get("torch_dtype")
    return {
        "task": task,
        "bos_token_id": _int_or_none(raw.get("bos_token_id")),
        "eos_token_ids": _eos_ids(raw.get("eos_token_id")),
        "pad_token_id": _int_or_none(raw.get("pad_token_id")),
        "id2label": labels,
        "problem_type": problem,
        "torch_dtype": str(dtype) if dtype else None,
        "extra": dict(raw),
    }


def _parse_gpt2(raw: dict[str, Any], task: Task) -> ModelConfig:
    if raw.get("scale_attn_by_inverse_layer_idx"):
        raise ConfigError("GPT-2 scale_attn_by_inverse_layer_idx=true is not supported")
    if raw.get("scale_attn_weights") is False:
        raise ConfigError("GPT-2 scale_attn_weights=false is not supported")
    if raw.get("add_cross_attention"):
        raise ConfigError("GPT-2 add_cross_attention=true (encoder-decoder) is not supported")
    hidden = int(_require(raw, "n_embd", "hidden_size"))
    heads = int(_require(raw, "n_head", "num_attention_heads"))
    if hidden % heads:
        raise ConfigError(f"n_embd {hidden} is not divisible by n_head {heads}")
    return ModelConfig(
        model_type="gpt2",
        family="gpt2",
        vocab_size=int(_require(raw, "vocab_size")),
        hidden_size=hidden,
        num_layers=int(_require(raw, "n_layer", "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=int(raw.get("n_inner") or 4 * hidden),
        max_position_embeddings=int(_require(raw, "n_positions", "max_position_embeddings")),
        norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
        activation=str(raw.get("activation_function", "gelu_new")),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        rope=None,
        **_common(raw, task),
    )


def _parse_rope(raw: dict[str, Any]) -> RopeConfig:
    # transformers >= 5 writes "rope_parameters"; older checkpoints "rope_theta" + "rope_scaling".
    params = dict(raw.get("rope_parameters") or {})
    scaling = dict(raw.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = str(merged.get("rope_type", merged.get("type", "default")))
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind == "linear":
        return RopeConfig(theta=theta, kind=kind, factor=float(merged["factor"]))
    if kind == "llama3":
        return RopeConfig(
            theta=theta,
            kind=kind,
            factor=float(merged["factor"]),
            low_freq_factor=float(merged["low_freq_factor"]),
            high_freq_factor=float(merged["high_freq_factor"]),
            original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
        )
    raise ConfigError(
        f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)"
    )


def _parse_llama(raw: dict[str, Any], task: Task) -> ModelConfig:
    model_type = str(raw.get("model_type", "llama"))
    hidden = int(_require(raw, "hidden_size"))
    heads = int(_require(raw, "num_attention_heads"))
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise ConfigError(
            f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    head_dim = int(raw.get("head_dim") or hidden // heads)
    if raw.get("pretraining_tp", 1) not in (1, None):
        raise ConfigError("pretraining_tp != 1 is not supported")
    max_pos = int(raw.get("max_position_embeddings", 2048))
    # Sliding-window attention only differs from full attention on sequences longer than
    # the window, so we honour it exactly by never letting a sequence grow past it.
    window = _int_or_none(raw.get("sliding_window"))
    uses_window = window is not None and window > 0 and (
        model_type == "mistral" or bool(raw.get("use_sliding_window"))
    )
    if uses_window and window is not None:
        max_pos = min(max_pos, window)
    attention_bias = bool(raw.get("attention_bias", False))
    return ModelConfig(
        model_type=model_type,
        family="llama",
        vocab_size=int(_require(raw, "vocab_size")),
        hidden_size=hidden,
        num_layers=int(_require(raw, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=int(_require(raw, "intermediate_size")),
        max_position_embeddings=max_pos,
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        activation=str(raw.get("hidden_act", "silu")),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v bias (and no o bias); Llama has them iff attention_bias.
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=False if model_type == "qwen2" else attention_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        rope=_parse_rope(raw),
        **_common(raw, task),
    )


# ---------------------------------------------------------------------------- writing


def _common_out(cfg: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "architectures": [cfg.architecture],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": (
            cfg.eos_token_ids[0] if len(cfg.eos_token_ids) == 1 else list(cfg.eos_token_ids) or None
        ),
        "pad_token_id": cfg.pad_token_id,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    if cfg.torch_dtype:
        out["torch_dtype"] = cfg.torch_dtype
    if cfg.task is Task.SEQUENCE_CLASSIFICATION:
        out["id2label"] = {str(i): name for i, name in enumerate(cfg.id2label)}
        out["label2id"] = {name: i for i, name in enumerate(cfg.id2label)}
        out["num_labels"] = cfg.num_labels
        out["problem_type"] = cfg.problem_type.value if cfg.problem_type else None
    return out


def _write_gpt2(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "n_embd": cfg.hidden_size,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_size,
        "n_positions": cfg.max_position_embeddings,
        "layer_norm_epsilon": cfg.norm_eps,
        "activation_function": cfg.activation,
        "scale_attn_weights": True,
        **_common_out(cfg),
    }


def _write_llama(cfg: ModelConfig) -> dict[str, Any]:
    rope = cfg.rope or RopeConfig()
    scaling: dict[str, Any] | None = None
    if rope.kind == "linear":
        scaling = {"rope_type": "linear", "factor": rope.factor}
    elif rope.kind == "llama3":
        scaling = {
            "rope_type": "llama3",
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
        }
    out = {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": cfg.activation,
        "mlp_bias": cfg.mlp_bias,
        "rope_theta": rope.theta,
        "rope_scaling": scaling,
        **_common_out(cfg),
    }
    if cfg.model_type == "llama":
        out["attention_bias"] = cfg.qkv_bias
    return out


# ---------------------------------------------------------------------------- registry

# model_type -> family parser. Adding a model type means adding a line here.
CONFIG_PARSERS = {
    "gpt2": _parse_gpt2,
    "llama": _parse_llama,
    "qwen2": _parse_llama,
    "mistral": _parse_llama,
}

CONFIG_WRITERS = {"gpt2": _write_gpt2, "llama": _write_llama}

# config.json "architectures" entry -> (model_type, task)
ARCHITECTURES: dict[str, tuple[str, Task]] = {
    "GPT2LMHeadModel": ("gpt2", Task.CAUSAL_LM),
    "GPT2ForSequenceClassification": ("gpt2", Task.SEQUENCE_CLASSIFICATION),
    "LlamaForCausalLM": ("llama", Task.CAUSAL_LM),
    "LlamaForSequenceClassification": ("llama", Task.SEQUENCE_CLASSIFICATION),
    "Qwen2ForCausalLM": ("qwen2", Task.CAUSAL_LM),
    "Qwen2ForSequenceClassification": ("qwen2", Task.SEQUENCE_CLASSIFICATION),
    "MistralForCausalLM": ("mistral", Task.CAUSAL_LM),
    "MistralForSequenceClassification": ("mistral", Task.SEQUENCE_CLASSIFICATION),
}
ARCHITECTURE_NAMES = {value: name for name, value in ARCHITECTURES.items()}


def config_from_hf(raw: dict[str, Any]) -> ModelConfig:
    """Parse a config.json dict; raise ConfigError naming what is supported otherwise."""
    architectures = raw.get("architectures") or []
    model_type = raw.get("model_type")
    supported = ", ".join(sorted(ARCHITECTURES))
    if architectures:
        name = architectures[0]
        if name not in ARCHITECTURES:
            raise ConfigError(
                f"architecture {name!r} is not supported; supported architectures: {supported}"
            )
        arch_type, task = ARCHITECTURES[name]
        if model_type is not None and model_type != arch_type:
            raise ConfigError(
                f"config.json model_type {model_type!r} does not match architecture {name!r}"
            )
        model_type = arch_type
    elif model_type in CONFIG_PARSERS:
        task = Task.CAUSAL_LM
    else:
        raise ConfigError(
            f"model_type {model_type!r} with no known architecture is not supported; "
            f"supported architectures: {supported}"
        )
    try:
        cfg = CONFIG_PARSERS[str(model_type)]({**raw, "model_type": model_type}, task)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config.json is malformed: {exc!r}") from exc
    _validate(cfg)
    return cfg


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json dict that both we and `transformers` load back to the same model."""
    fresh = CONFIG_WRITERS[cfg.family](cfg)
    # Keep unknown keys of the source config (e.g. generation hints) but let ours win.
    kept = {k: v for k, v in cfg.extra.items() if k not in _DERIVED_KEYS}
    return {**kept, **fresh}


# Keys we always recompute; stale copies in `extra` must not survive a save.
_DERIVED_KEYS = frozenset(
    {"rope_parameters", "rope_scaling", "rope_theta", "dtype", "transformers_version",
     "id2label", "label2id", "num_labels", "problem_type"}
)


def _validate(cfg: ModelConfig) -> None:
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim",
                 "intermediate_size", "max_position_embeddings"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"config.json {name} must be positive, got {getattr(cfg, name)}")
    if not math.isfinite(cfg.norm_eps) or cfg.norm_eps <= 0:
        raise ConfigError("config.json normalisation epsilon must be a positive number")
