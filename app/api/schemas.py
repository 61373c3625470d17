"""Request and response bodies of every endpoint, with examples for the OpenAPI schema.

Single-input convenience: responses always carry `results` (one per input, or per input
and completion); the top-level fields (`text`, `predictions`, `label`, ...) repeat
`results[0]`, which is all a single-input caller needs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from app.api.openai_fields import (
    IgnoredOpenAIFields,
    UnsupportedChatFields,
    UnsupportedCompletionFields,
)
from app.api.router_fields import ChatExtensionFields, SamplingExtensionFields
from app.api.tool_fields import ToolCall, ToolDefinition, ToolRequestFields

NonEmptyStr = Annotated[str, Field(min_length=1)]
TextInput = str | Annotated[list[str], Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
PromptInput = (str | Annotated[list[str], Field(min_length=1)] | TokenIds
               | Annotated[list[TokenIds], Field(min_length=1)])
# Stop strings are matched against the text held back at each token, which is as long as
# the longest stop string: the cap keeps that work small and bounded per token.
MAX_STOP_CHARS = 256
StopStr = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
CacheSalt = Annotated[str, Field(min_length=1, max_length=256)]
CACHE_SALT_DOC = ("prefix-cache namespace: only requests with the same salt share cached "
                  "prompt blocks (and so can see each other in cached_tokens and latency)")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Loose(BaseModel):
    # Parts of OpenAI bodies that clients fill with fields of features we do not have
    # (a chat message's tool_calls from an earlier turn, new stream_options): ignored.
    # Whole request bodies are Strict: an unknown top-level field gets 400 naming it.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


# ---------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail

    model_config = ConfigDict(json_schema_extra={"example": {"error": {
        "message": "model 'gpt-9' does not exist (served: default-lm, fortune-classifier)",
        "type": "not_found_error", "param": "model", "code": 404}}})


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="prompt tokens served from the prefix cache")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    cached_tokens: int = Field(0, description="prompt tokens served from the prefix cache "
                                              "(also in prompt_tokens_details, as OpenAI)")
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int = 0, cached_tokens: int = 0
           ) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens, cached_tokens=cached_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))


# ---------------------------------------------------------------------------- predict


class PredictRequest(Strict):
    model: str | None = Field(None, description="served model name (default: the first LM)")
    text: TextInput = Field(description="text (or list of texts) to continue")
    top_k: int = Field(5, ge=1, description="most likely next tokens to return")
    temperature: float = Field(1.0, gt=0, le=100, description="softmax temperature")
    full_distribution: bool = Field(False, description="also return the probability of "
                                                       "every vocabulary token")
    add_special_tokens: bool = True
    cache_salt: CacheSalt | None = Field(None, description=CACHE_SALT_DOC)

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"text": "The quick brown fox", "top_k": 3}]})


class TokenProb(BaseModel):
    token: str
    token_id: int
    prob: float
    logprob: float


class PredictResult(BaseModel):
    index: int
    predictions: list[TokenProb]
    argmax: TokenProb
    prompt_tokens: int
    distribution: list[float] | None = Field(
        None, description="P(token id) for every token id, when full_distribution is set")


class PredictResponse(BaseModel):
    model: str
    predictions: list[TokenProb]
    argmax: TokenProb
    results: list[PredictResult]
    usage: Usage


# ---------------------------------------------------------------------------- generate


class StructuredOutputs(Strict):
    """vLLM's structured_outputs: exactly one constraint."""

    json_: dict[str, Any] | StrictBool | str | None = Field(
        None, alias="json", description="a JSON Schema (object, boolean or JSON text)")
    regex: str | None = Field(None, max_length=4096, description="the whole output matches")
    choice: Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]],
                      Field(min_length=1, max_length=256)] | None = Field(
        None, description="the output is exactly one of these")
    grammar: str | None = Field(None, max_length=65536,
                                description="a Lark grammar (llguidance), or GBNF")
    json_object: bool | None = Field(None, description="any JSON object")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SamplingFields(SamplingExtensionFields):
    """Sampling controls shared by /v1/generate and the OpenAI endpoints."""

    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most "
                                                           "(default: the server's)")
    temperature: float = Field(1.0, ge=0, le=100, description="0 means greedy")
    top_k: int = Field(0, ge=0, description="sample among the k most likely (0: off)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    min_p: float = Field(0.0, ge=0, le=1, description="drop tokens below min_p x max prob")
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, description="token id (as a string) -> bias added to its logit")
    seed: int | None = Field(None, ge=0, le=2**62, description="reproducible sampling")
    stop: StopStr | Annotated[list[Annotated[StopStr, Field(min_length=1)]],
                              Field(max_length=16)] | None = Field(
        None, description=f"stop strings (not included in the output), up to 16 of at most "
                          f"{MAX_STOP_CHARS} characters")
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(None, max_length=64)
    min_tokens: int = Field(0, ge=0, description="no EOS, stop token or stop string before "
                                                 "this many tokens")
    ignore_eos: bool = False
    n: int = Field(1, ge=1, description="completions per prompt")
    stream: bool = False
    cache_salt: CacheSalt | None = Field(None, description=CACHE_SALT_DOC)
    structured_outputs: StructuredOutputs | None = Field(
        None, description="vLLM: constrain the output to a JSON Schema (json), a regex, one "
                          "of a list (choice) or a grammar; see README")
    guided_json: dict[str, Any] | StrictBool | str | None = Field(
        None, description="vLLM's older alias of structured_outputs.json")
    guided_regex: str | None = Field(None, max_length=4096,
                                     description="alias of structured_outputs.regex")
    guided_choice: Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]],
                             Field(min_length=1, max_length=256)] | None = Field(
        None, description="alias of structured_outputs.choice")
    guided_grammar: str | None = Field(None, max_length=65536,
                                       description="alias of structured_outputs.grammar")


class GenerateRequest(Strict, SamplingFields):
    model: str | None = Field(None, description="served model name (default: the first LM)")
    prompt: TextInput = Field(description="prompt text, or a list of prompts")
    logprobs: bool = Field(False, description="return each token's log-probability")
    top_logprobs: int = Field(0, ge=0, description="alternatives per token, with logprobs")
    logprobs_mode: Literal["processed", "raw"] = Field(
        "processed", description="processed: after penalties, temperature and filters "
                                 "(what was sampled from); raw: the model's own softmax")
    return_tokens: bool = Field(False, description="include generated token ids")
    priority: int = Field(0, ge=-100, le=100, description="lower is scheduled first")
    prompt_logprobs: int | None = Field(
        None, ge=0, description="vLLM: each prompt token's logprob, rank and the N most "
                                "likely alternatives, in results[].prompt_logprobs")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "The meaning of life is", "max_tokens": 24, "temperature": 0.7,
         "seed": 1}]})


class PromptLogprob(BaseModel):
    logprob: float
    rank: int = Field(description="1 = the most likely token at that position")
    decoded_token: str


class TopLogprob(BaseModel):
    token: str
    token_id: int
    logprob: float


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class GenerateResult(BaseModel):
    index: int = Field(description="completion index within its prompt (0..n-1)")
    prompt_index: int
    text: str
    finish_reason: str | None
    tokens: list[int] | None = None
    logprobs: list[TokenLogprobOut] | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        None, description="with prompt_logprobs: per prompt token, keyed by token id; the "
                          "first is null")


class GenerateResponse(BaseModel):
    id: str
    model: str
    text: str
    finish_reason: str | None
    results: list[GenerateResult]
    usage: Usage


# ---------------------------------------------------------------------------- classify


class ClassifyRequest(Strict):
    model: str | None = Field(None, description="default: the first classifier, or the "
                                                "first LM when candidate_labels are given")
    text: TextInput
    top_k: int | None = Field(None, ge=1, description="labels to return (default: all)")
    candidate_labels: Annotated[list[NonEmptyStr], Field(min_length=1)] | None = Field(
        None, description="zero-shot labels, scored by a language model's likelihood")
    multi_label: bool = Field(False, description="zero-shot: score each label on its own")
    prompt_template: str = Field(
        "{text}", max_length=1000,
        description="zero-shot: context before ' <label>'; must contain {text}")
    method: Literal["score", "generate"] = Field(
        "score", description="zero-shot: score = each label's likelihood as the text's "
                             "continuation; generate = the label the model writes "
                             "(greedy, constrained to the labels; the others score 0)")
    cache_salt: CacheSalt | None = Field(None, description=CACHE_SALT_DOC)

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"text": "The compiler segfaulted again."},
        {"text": "I love pizza", "candidate_labels": ["food", "sports"]}]})


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResult(BaseModel):
    index: int
    label: str
    score: float
    scores: list[LabelScore]


class ClassifyResponse(BaseModel):
    model: str
    label: str
    score: float
    scores: list[LabelScore]
    results: list[ClassifyResult]
    usage: Usage


# ---------------------------------------------------------------------------- tokenize


class ChatTemplateFields(BaseModel):
    """What a chat request gives its template besides the messages: with these, tokenizing
    messages counts exactly the prompt tokens the chat request would use."""

    tools: list[ToolDefinition] | None = Field(
        None, description="with messages: the functions, rendered as chat renders them "
                          "(tool_choice auto or required)")
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="with messages: extra variables for the chat template, e.g. "
                          "{\"enable_thinking\": false}")


class TokenizeRequest(Strict, ChatTemplateFields):
    model: str | None = None
    text: str | None = Field(None, description="text to tokenize")
    messages: list[ChatMessage] | None = Field(
        None, description="chat messages (as chat completions takes them), rendered with "
                          "the model's chat template")
    add_special_tokens: bool = True

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "Hello world"}]})


class TokenizeResponse(BaseModel):
    model: str
    tokens: list[int]
    token_strings: list[str]
    count: int
    max_model_len: int


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]
    skip_special_tokens: bool = Field(True, description="false: keep special tokens such "
                                                        "as the chat template's markers")

    model_config = ConfigDict(json_schema_extra={"examples": [{"tokens": [42, 17]}]})


class DetokenizeResponse(BaseModel):
    model: str
    text: str


class EmbeddingRequest(Strict):
    """OpenAI's /v1/embeddings, plus `pooling` (ours)."""

    model: str | None = None
    input: PromptInput = Field(description="text, a list of texts, token ids, or a list of "
                                           "token-id lists")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: the little-endian float32 bytes, base64-encoded")
    dimensions: int | None = Field(None, ge=1, description="only the model's hidden size is "
                                                           "supported (no truncation)")
    pooling: Literal["mean", "last"] = Field(
        "mean", description="mean of the final hidden states over the input's tokens, or "
                            "the last token's")
    user: str | None = None
    cache_salt: CacheSalt | None = Field(None, description=CACHE_SALT_DOC)

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "default-lm", "input": ["The cat sat.", "A dog ran."]}]})


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="L2-normalised; a base64 string with "
                                                     "encoding_format base64")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class PerplexityRequest(Strict):
    """Ours: how well a language model predicts given text."""

    model: str | None = None
    text: PromptInput = Field(description="text, a list of texts, token ids, or a list of "
                                          "token-id lists")
    window: int | None = Field(None, ge=2, description="tokens of context per window "
                                                       "(default: the model's context)")
    stride: int | None = Field(None, ge=1, description="tokens from one window's start to "
                                                       "the next's (default: half the "
                                                       "window); window - 1 gives windows "
                                                       "that share one token, as `python -m "
                                                       "app eval lm` uses")
    logprobs: bool = Field(False, description="also return each scored token's logprob")
    cache_salt: CacheSalt | None = Field(None, description=CACHE_SALT_DOC)

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"text": "The best thing about computers is that they do what you say."}]})


class ScoredToken(BaseModel):
    token: str
    token_id: int
    logprob: float


class PerplexityResult(BaseModel):
    index: int
    tokens: int = Field(description="tokens in the text")
    scored_tokens: int = Field(description="tokens predicted (all but the first)")
    mean_nll: float = Field(description="mean negative log-likelihood, nats per token")
    perplexity: float
    logprobs: list[ScoredToken] | None = None


class PerplexityResponse(BaseModel):
    model: str
    window: int
    stride: int
    mean_nll: float = Field(description="over every scored token of every text")
    perplexity: float
    results: list[PerplexityResult]
    usage: Usage


class VLLMTokenizeRequest(Strict, ChatTemplateFields):
    """vLLM's /tokenize: a completion prompt or chat messages."""

    model: str | None = None
    prompt: str | None = Field(None, description="text to tokenize")
    messages: list[ChatMessage] | None = Field(
        None, description="chat messages (as chat completions takes them), rendered with "
                          "the model's chat template")
    add_special_tokens: bool | None = Field(
        None, description="add the tokenizer's special tokens (BOS); default true for a "
                          "prompt, false for messages (the template writes them)")
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "Hello world", "add_special_tokens": False}]})


class VLLMTokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class VLLMDetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]

    model_config = ConfigDict(json_schema_extra={"examples": [{"tokens": [42, 17]}]})


class VLLMDetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfoResponse(BaseModel):
    """vLLM's /tokenizer_info: what a client needs to tokenize like the server."""

    model: str
    tokenizer_class: str
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    add_bos_token: bool
    chat_template: str = Field(description="the template the server applies (the model's, "
                                           "or the built-in fallback)")
    model_max_length: int
    vocab_size: int


# ---------------------------------------------------------------------------- info, health


class ModelInfo(BaseModel):
    name: str
    path: str
    task: str
    architecture: str
    dtype: str
    device: str
    max_model_len: int
    vocab_size: int
    parameters: int
    labels: list[str] | None = None
    kv_cache_blocks: int
    block_size: int
    kv_blocks_used: int = Field(description="blocks held by requests right now")
    running_requests: int
    waiting_requests: int
    compile: str = Field(description="whether the dense math runs compiled, and why "
                                     "(--compile; measured choices at startup)")
    weights: str = Field(description="whether linear weights are prepacked for oneDNN, "
                                     "and why (--prepack)")
    quantization: str = Field(
        "none", description="none, or the weight format (int8 / int4 and group size), the "
                            "bytes of quantized weights and the kernels chosen at startup "
                            "(--quantization)")
    speculative: str = Field("off", description="speculative decoding (--speculative-config)")
    spec_acceptance_rate: float | None = Field(
        None, description="guessed tokens kept / guessed tokens scored, so far (null: "
                          "nothing guessed yet)")
    max_loras: int = Field(0, description="LoRA adapters resident at once and per step "
                                          "(0: LoRA off for this model)")
    adapters: list[AdapterInfo] = Field(
        default_factory=list, description="the LoRA adapters loaded on this model")


class AdapterInfo(BaseModel):
    name: str = Field(description="what requests put in `model` to use it")
    path: str
    rank: int
    resident: bool = Field(description="its weights sit in one of the --max-loras slots "
                                       "now (else a step that needs it copies them in, "
                                       "evicting the least recently used idle adapter)")
    requests: int = Field(description="requests with it in flight")


class InfoResponse(BaseModel):
    version: str
    phase: str
    models: list[ModelInfo]
    limits: dict[str, int | float]


class HealthResponse(BaseModel):
    status: str
    phase: str
    models: dict[str, str] = {}
    reason: str | None = None


# ---------------------------------------------------------------------------- OpenAI


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "local"
    root: str | None = Field(None, description="the checkpoint's or the adapter's path "
                                               "(as vLLM says it)")
    parent: str | None = Field(None, description="a LoRA adapter's base model (null for "
                                                 "a model)")
    max_model_len: int | None = None


class LoadLoraAdapterRequest(Strict):
    """vLLM's body, with the base model named when several language models are served."""

    lora_name: str = Field(description="the name requests will give in `model`")
    lora_path: str = Field(description="the adapter's folder (adapter_config.json + "
                                       "adapter_model.safetensors), inside --lora-dir: "
                                       "absolute, or relative to --lora-dir")
    base_model_name: str | None = Field(
        None, description="the served model it adapts (default: the first served "
                          "language model)")
    load_inplace: bool = Field(False, description="vLLM's: replace a loaded adapter of the "
                                                  "same name (not supported: unload first)")


class UnloadLoraAdapterRequest(Strict):
    lora_name: str
    lora_int_id: int | None = Field(None, description="vLLM's; ignored (names identify "
                                                      "adapters here)")


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class StreamOptions(Loose):
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    name: str = Field("response", max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None
    description: str | None = None

    model_config = ConfigDict(populate_by_name=True)


class ResponseFormat(BaseModel):
    """OpenAI's response_format."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class CompletionRequest(Strict, SamplingFields, IgnoredOpenAIFields,
                        UnsupportedCompletionFields):
    model: str | None = None
    prompt: PromptInput = Field(description="text, a list of texts, token ids, or a list of "
                                            "token-id lists")
    max_tokens: int | None = Field(None, ge=0, description="tokens to generate at most; 0 "
                                                           "only with echo (score the prompt)")
    logprobs: int | None = Field(None, ge=0, description="top alternatives per token; with "
                                                         "echo, for the prompt's tokens too")
    echo: bool = Field(False, description="prepend the prompt to each completion (and its "
                                          "tokens' logprobs, the first null, with logprobs)")
    prompt_logprobs: int | None = Field(
        None, ge=0, description="vLLM: each prompt token's logprob, rank and the N most "
                                "likely alternatives, in choices[].prompt_logprobs")
    response_format: ResponseFormat | None = Field(
        None, description="OpenAI: json_object, or json_schema with a schema")
    best_of: int | None = Field(None, ge=1)
    stream_options: StreamOptions | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "default-lm", "prompt": "Once upon a time", "max_tokens": 16}]})


class ChatMessage(Loose):
    """Loose: clients send back assistant messages with fields of their own (refusal,
    annotations). Content may be absent only from an assistant's turn, so a misspelt
    `content` is still caught; a tool result names the call it answers."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's calls")
    tool_call_id: str | None = Field(None, description="the call a tool result answers")
    reasoning_content: str | None = Field(
        None, description="an assistant's earlier reasoning (templates may show it)")

    @model_validator(mode="after")
    def _needs_content(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs `content`")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs `tool_call_id`")
        return self


class ChatCompletionRequest(Strict, SamplingFields, ToolRequestFields, ChatExtensionFields,
                            IgnoredOpenAIFields, UnsupportedChatFields):
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = Field(
        None, description="OpenAI: json_object, or json_schema with a schema")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    stream_options: StreamOptions | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "default-lm", "messages": [{"role": "user", "content": "Tell me a joke"}],
         "max_tokens": 32},
        {"model": "default-lm", "messages": [{"role": "user", "content": "Weather in Paris?"}],
         "tools": [{"type": "function", "function": {
             "name": "get_weather", "description": "Current weather in a city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}}],
         "tool_choice": "required", "max_tokens": 80}]})


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(
        description="with echo, the first prompt token's is null (nothing predicts it)")
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        None, description="vLLM: per prompt token, keyed by token id; the first is null")


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = Field(
        None, description="identifies the serving configuration (version, model, dtype, "
                          "device); changes when results may change")


class ChatLogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] = []


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatLogprobEntry] | None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="null beside tool calls when there is no text")
    # Absent unless present, as OpenAI answers (and vLLM's reasoning_content)
    tool_calls: list[ToolCall] | None = Field(None, exclude_if=lambda v: v is None)
    reasoning_content: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="the reasoning before the answer, with a reasoning parser")


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: str | None
    logprobs: ChatChoiceLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = Field(
        None, description="identifies the serving configuration (version, model, dtype, "
                          "device); changes when results may change")
