"""SamplingParams: what a request asks of the sampler and the stop logic (a frozen value
built by the API from request fields and obeyed by the engine), and TokenLogprob and
Sampled, what the sampler reports back. No torch and nothing from app.engine here, so every layer,
the torch-free scheduler included, can import it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

# The log-probability reported for a token the processed distribution can never produce
# (removed by top-k / top-p / min-p, masked by min_tokens, or underflowing at a tiny
# temperature). -inf is not JSON, so every endpoint reports this finite floor instead
# (the most negative float32, as vLLM does); its probability is exactly 0.
IMPOSSIBLE_LOGPROB = -3.4028234663852886e38


class LogprobsMode(enum.StrEnum):
    RAW = "raw"  # log-softmax of the model's logits
    PROCESSED = "processed"  # after penalties, bias, temperature and top-k/p/min-p


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float  # never -inf: IMPOSSIBLE_LOGPROB stands for an impossible token
    top: list[tuple[int, float]]  # most likely tokens and their log-probabilities


@dataclass
class Sampled:
    """One drawn token, with its log-probabilities when the request asked for them."""

    token_id: int
    logprob: TokenLogprob | None


class InvalidParams(ValueError):
    """A sampling parameter out of range; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0  # EOS, stop token ids and stop strings are held off until then
    ignore_eos: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    logprobs_mode: LogprobsMode = LogprobsMode.PROCESSED
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False  # the stop string that ended the text stays
    speculate: bool = True  # False: no speculative decoding for this request

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    def validate(self, vocab_size: int, max_top_logprobs: int = 20) -> None:
        """Raise InvalidParams naming the first bad field."""
        floats = {
            "temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        for name, value in floats.items():
            if not math.isfinite(value):
                raise InvalidParams(f"{name} must be a finite number", name)
        checks = [
            (self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 disables it)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (self.min_tokens >= 0, "min_tokens", "must be >= 0"),
            (self.min_tokens <= self.max_tokens, "min_tokens", "must not exceed max_tokens"),
            (self.n >= 1, "n", "must be at least 1"),
            (0 <= self.top_logprobs <= max_top_logprobs, "top_logprobs",
             f"must be in [0, {max_top_logprobs}]"),
            (all(s for s in self.stop), "stop", "stop strings must not be empty"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise InvalidParams(f"{name} {message}", name)
        for token_id in self.stop_token_ids:
            if not 0 <= token_id < vocab_size:
                raise InvalidParams(f"stop_token_ids: {token_id} is not in the vocabulary "
                                    f"(0..{vocab_size - 1})", "stop_token_ids")
        for token_id, bias in self.logit_bias:
            if not 0 <= token_id < vocab_size:
                raise InvalidParams(f"logit_bias: token {token_id} is not in the vocabulary "
                                    f"(0..{vocab_size - 1})", "logit_bias")
            if not math.isfinite(bias) or abs(bias) > 100:
                raise InvalidParams("logit_bias values must be in [-100, 100]", "logit_bias")
