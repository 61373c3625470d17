"""Settings: every option is a CLI flag (`--max-num-seqs 8`) and an environment variable
with the LLM_ prefix (`LLM_MAX_NUM_SEQS=8`). Validated once at start-up, then turned into
frozen configs; nothing reads the environment at import time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine.speculative import SpeculativeConfig

ENV_PREFIX = "LLM_"
QUANTIZATION_METHODS = ("none", "int8", "int4")


def _split_list(value: object) -> object:
    # Env vars may hold a comma-separated list ("a,b") as well as JSON.
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            import json

            return json.loads(stripped)
        return [v.strip() for v in stripped.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="python -m app serve",
        extra="forbid",
    )

    # --- models and placement
    model: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default-lm=models/default-lm",
                                 "fortune-classifier=models/fortune-classifier"],
        description="checkpoint directory, or NAME=DIR; repeat for several models "
                    "(the first serving an endpoint is its default)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and KV-cache dtype (auto: bf16/fp16 on GPU; on CPU bf16 "
                            "for models of 50M+ parameters when the CPU has native bf16, "
                            "else fp32)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    compile: Literal["auto", "on", "off"] = Field(
        "auto", description="compile the model's dense math with torch.compile: auto = on "
                            "CPUs where a C++ compiler works (else eager, reason logged); "
                            "startup then takes longer (warm-up, covered by /startupz)")
    prepack: Literal["auto", "on", "off"] = Field(
        "auto", description="prepack linear weights for oneDNN (CPU): auto = where it "
                            "measures faster at startup; costs one more copy of them")
    quantization: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="weight quantization at load: none | int8 | int4 for every model, or "
                    "NAME=METHOD for one (repeat or comma-separate); int8 per output channel, "
                    "int4 in groups (see docs/PERFORMANCE.md for when to use which)")
    int4_group_size: Literal[32, 64, 128] = Field(
        64, description="weights per int4 group (one float16 scale and min each)")
    integer_kernels: bool = Field(
        False, description="offer the integer dot-product kernels (activations rounded to "
                           "int8 per block of 32, as llama.cpp's q8_0 / q4_0 do) to the "
                           "startup choice of quantized products; off: a request's tokens "
                           "would otherwise depend on the rows it is batched with")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: torch's default)")

    # --- HTTP
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind")
    api_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted API keys (Authorization: Bearer KEY); "
                                          "none: no auth")
    api_key_file: Path | None = Field(None, description="file with one API key per line")
    public_health: bool = Field(True, description="health probes need no API key")
    public_metrics: bool = Field(True, description="/metrics needs no API key")
    drain_timeout: float = Field(30.0, ge=0, description="seconds in-flight requests get "
                                                          "to finish after SIGTERM")
    keep_alive_timeout: int = Field(
        75, ge=1, description="seconds an idle HTTP/1.1 connection stays open: longer than "
                              "clients keep theirs (httpx and the OpenAI SDK: 5 s) and "
                              "than load balancers' idle timeouts (60 s), so the server is "
                              "never the one that closes a connection a client reuses")
    playground: bool = Field(True, description="serve the browser playground at GET / "
                                               "(the page is public; its API calls are not)")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (none: CORS off)")

    # --- request limits
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body")
    max_prompt_tokens: int = Field(0, ge=0, description="longest prompt (0: the model's "
                                                        "context)")
    max_tokens_limit: int = Field(2048, ge=1, description="largest max_tokens accepted")
    default_max_tokens: int = Field(64, ge=1, description="max_tokens when a request omits it")
    max_inputs: int = Field(32, ge=1, description="most texts/prompts in one request")
    max_n: int = Field(8, ge=1, description="largest n (completions per prompt)")
    max_top_logprobs: int = Field(20, ge=0, description="largest top_logprobs")
    max_predict_top_k: int = Field(100, ge=1, description="largest top_k of /v1/predict")
    max_full_distribution: int = Field(
        65536, ge=0, description="/v1/predict full_distribution allowed up to this vocab size")
    max_candidate_labels: int = Field(32, ge=1, description="most zero-shot labels")

    # --- engine
    block_size: int = Field(16, ge=1, le=1024, description="tokens per KV-cache block")
    num_kv_blocks: int = Field(0, ge=0, description="KV-cache blocks per model (0: auto)")
    kv_cache_memory_fraction: float = Field(
        0.25, gt=0, le=0.95, description="auto KV-cache sizing: share of free memory")
    max_model_len: int = Field(0, ge=0, description="context cap (0: the model's)")
    enable_prefix_caching: bool = Field(True, description="reuse KV blocks of shared prefixes")
    structured_output_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds a structured-output constraint (JSON "
                                        "Schema, regex, grammar) may take to compile "
                                        "before the request is refused with 400")
    tool_call_parser: Literal["auto", "hermes", "llama3_json", "mistral"] = Field(
        "auto", description="how tool calls are read from answers: hermes (Qwen2.5/Qwen3/"
                            "Hermes), llama3_json (Llama 3.1+), mistral; auto: the family "
                            "the chat template was written for (hermes when it knows no "
                            "tools)")
    reasoning_parser: Literal["none", "auto", "qwen3", "deepseek_r1"] = Field(
        "none", description="split think-tag reasoning from the answer (reasoning_content): "
                            "qwen3 (reasoning when the model or the prompt opens the tag), "
                            "deepseek_r1 (the answer starts in reasoning); auto: qwen3 "
                            "when the chat template uses think tags")
    kv_events_endpoint: str | None = Field(
        None, description="publish KV-cache events (BlockStored / BlockRemoved, vLLM's "
                          "ZeroMQ + msgpack format) on this ZeroMQ endpoint, e.g. "
                          "tcp://*:5557, for prefix-aware routers (off when unset)")
    kv_events_topic: str = Field("", description="ZeroMQ topic of the KV-cache events")
    responses_store_entries: int = Field(
        1000, ge=0, description="/v1/responses kept for GET and previous_response_id "
                                "(0: none are kept); the least recently used go first")
    responses_store_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="most bytes (as JSON) of stored /v1/responses "
                                            "together; the least recently used go first")
    responses_store_ttl: float = Field(
        3600.0, gt=0, description="seconds a stored /v1/responses answer is kept")
    speculative_config: str | None = Field(
        None, description="speculative decoding, vLLM's JSON: {\"method\": \"ngram\", "
                          "\"num_speculative_tokens\": 4, \"prompt_lookup_min\": 2, "
                          "\"prompt_lookup_max\": 4, \"max_batch\": 4, \"cooldown\": 2, "
                          "\"max_verify_cost\": 2.0}, or {\"method\": \"draft_model\", "
                          "\"model\": DIR or a served model's name, "
                          "\"num_speculative_tokens\": 4}; off when unset (see README)")
    # --- LoRA adapters (README "LoRA adapters")
    lora: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="a PEFT LoRA adapter served at startup as NAME=DIR (on the first "
                    "served language model) or BASE/NAME=DIR (on the served model BASE); "
                    "repeat for several; requests name the adapter in `model`")
    max_loras: int = Field(4, ge=1, le=64, description="adapters resident per model at "
                                                        "once, and the most distinct "
                                                        "adapters in one forward step (the "
                                                        "least recently used idle one is "
                                                        "evicted)")
    max_lora_rank: int = Field(16, ge=1, le=256, description="largest adapter rank accepted "
                                                             "(r)")
    allow_runtime_lora: bool = Field(
        False, description="serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter "
                           "(vLLM's); needs --lora-dir")
    lora_dir: Path | None = Field(
        None, description="the folder adapters loaded at run time must lie in (paths are "
                          "resolved: symlinks and .. cannot leave it)")
    cache_salt_api_key: bool = Field(
        False, description="isolate the prefix cache per API key: callers with different "
                           "keys never share cached prompt blocks (see docs/RELIABILITY.md)")
    max_num_seqs: int = Field(32, ge=1, description="sequences per forward step")
    max_num_batched_tokens: int = Field(512, ge=1, description="tokens per forward step")
    num_scheduler_steps: int = Field(
        4, ge=1, le=64, description="decode steps the engine runs per schedule while every "
                                    "running sequence plainly decodes (tokens then stream "
                                    "that many at a time); 1: one step per schedule")
    max_waiting_requests: int = Field(128, ge=1, description="queued requests per model "
                                                             "before 429")
    max_waiting_tokens: int = Field(65536, ge=1, description="queued prompt tokens per model "
                                                            "before 429")

    # --- observability
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="debug | info | warning | error")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="json: one JSON object per line; text: for humans; auto: text "
                            "when stderr is a terminal, else json")
    log_prompts: bool = Field(False, description="include prompt text in request logs")
    metrics_compat: Literal["none", "vllm"] = Field(
        "none", description="also expose metrics under vLLM's names")
    metrics_max_age: float = Field(
        0.0, ge=0, le=60, description="seconds /metrics may reuse its formatted counters and "
                                      "histograms between scrapes (the engine's gauges are "
                                      "always read fresh): for frequent scrapers such as the "
                                      "GIE endpoint picker (20/s); 0: all read every scrape")
    _split = field_validator("model", "api_key", "cors_origins", "quantization", "lora",
                             mode="before")(_split_list)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.model:
            raise ValueError("at least one --model is required")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must be <= max_tokens_limit")
        if self.speculative_config:  # a clear error at startup
            spec = SpeculativeConfig.parse(self.speculative_config)
            if spec.uses_draft_model and spec.model is not None:
                draft_path(self, spec.model)
        for entry in self.quantization:
            method = entry.partition("=")[2] if "=" in entry else entry
            if method not in QUANTIZATION_METHODS:
                raise ValueError(f"quantization {entry!r}: the method must be one of "
                                 f"{', '.join(QUANTIZATION_METHODS)}")
        lora_specs(self)  # names, bases and collisions: a clear error at startup
        if self.allow_runtime_lora and self.lora_dir is None:
            raise ValueError("--allow-runtime-lora needs --lora-dir: the folder that adapters "
                             "loaded at run time must lie in")
        if self.lora_dir is not None and not self.lora_dir.is_dir():
            raise ValueError(f"--lora-dir {str(self.lora_dir)!r} is not a directory")
        return self

    @property
    def lora_enabled(self) -> bool:
        """Whether any adapter can ever be served (else the engines carry no LoRA slots)."""
        return bool(self.lora) or self.allow_runtime_lora

    def api_keys(self) -> list[str]:
        keys = [k.get_secret_value() for k in self.api_key]
        if self.api_key_file is not None:
            text = self.api_key_file.read_text(encoding="utf-8")
            keys += [line.strip() for line in text.splitlines()
                     if line.strip() and not line.startswith("#")]
        return keys


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    quantization: str = "none"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def model_specs(settings: Settings) -> list[ModelSpec]:
    """`DIR` or `NAME=DIR` entries -> named specs; a bare DIR is named after its folder."""
    specs: list[ModelSpec] = []
    for entry in settings.model:
        name, sep, path = entry.partition("=")
        if not sep:
            name, path = Path(entry).name, entry
        check_name(name, "model")
        if any(s.name == name for s in specs):
            raise ValueError(f"model name {name!r} is given twice")
        specs.append(ModelSpec(name, Path(path), _quantization_for(settings, name)))
    names = {s.name for s in specs}
    for entry in settings.quantization:
        target, sep, _ = entry.partition("=")
        if sep and target not in names:
            raise ValueError(f"quantization {entry!r} names no served model "
                             f"(models: {', '.join(sorted(names))})")
    return specs


@dataclass(frozen=True)
class LoraSpec:
    """An adapter given at startup: `name` served on the model `base` (None: the first
    served language model, known once the models are loaded)."""

    name: str
    path: Path
    base: str | None = None


def check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} must be 1-64 of letters, digits, . _ : - "
                         "(starting with a letter or digit)")


def lora_specs(settings: Settings) -> list[LoraSpec]:
    """`NAME=DIR` or `BASE/NAME=DIR` entries -> specs; names are unique among adapters and
    served models alike (a request's `model` names exactly one of them)."""
    models = {s.name for s in model_specs(settings)}
    specs: list[LoraSpec] = []
    for entry in settings.lora:
        target, sep, path = entry.partition("=")
        if not sep or not path:
            raise ValueError(f"--lora {entry!r}: write NAME=DIR or BASE/NAME=DIR")
        base, slash, name = target.rpartition("/")
        check_name(name, "adapter")
        if slash and base not in models:
            raise ValueError(f"--lora {entry!r}: {base!r} is not a served model (models: "
                             f"{', '.join(sorted(models))})")
        if name in models:
            raise ValueError(f"--lora {entry!r}: the adapter name {name!r} is a served "
                             "model's name; requests could not tell them apart")
        if any(s.name == name for s in specs):
            raise ValueError(f"adapter name {name!r} is given twice")
        specs.append(LoraSpec(name, Path(path), base if slash else None))
    return specs


def draft_path(settings: Settings, model: str) -> tuple[Path, str | None]:
    """A speculative draft named by --speculative-config's "model": a served model's name
    (its directory, and that name), else a checkpoint directory."""
    for spec in model_specs(settings):
        if spec.name == model:
            return spec.path, spec.name
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ValueError(f"speculative draft model {model!r} is neither a served model's "
                         "name nor a checkpoint directory (no config.json there)")
    return path, None


def _quantization_for(settings: Settings, name: str) -> str:
    """A NAME=METHOD entry for this model wins over a bare METHOD for all."""
    chosen = "none"
    for entry in settings.quantization:
        target, sep, method = entry.partition("=")
        if not sep:
            chosen = target
    for entry in settings.quantization:
        target, sep, method = entry.partition("=")
        if sep and target == name:
            chosen = method
    return chosen
