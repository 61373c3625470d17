"""Speculative decoding's proposer side (pure Python, no torch): which tokens to guess
next for a decoding sequence, and when guessing is worth it.

Two methods (vLLM's names):
  - `ngram`: prompt lookup, below;
  - `draft_model` (alias `draft`): a small model with the target's tokenizer guesses the
    next k tokens greedily, after each step, on the compute thread
    (app/engine/draft_runner.py); the step's output carries them here (`offer`), and the
    next schedule() takes them as the sequence's guesses.

n-gram prompt lookup (vLLM's `ngram`, transformers' `prompt_lookup_num_tokens`): find the
most recent earlier occurrence of the sequence's last n tokens (n from prompt_lookup_max
down to prompt_lookup_min) in its own prompt + output, and propose the k tokens that
followed it. The target model then scores the last token and the k guesses in one
forward (k + 1 rows cost about one row where a step is bandwidth-bound) and keeps the
longest prefix it agrees with (app/spec_verify.py), plus one token of its own.

Backing off (so speculation is never a large loss):
  - per sequence: a guess that keeps being rejected costs k rows for nothing, so after
    a proposal whose tokens were all rejected the sequence waits `cooldown` steps, and
    the wait doubles while that continues (reset by any acceptance);
  - per step: with many sequences decoding the step is compute-bound and k more rows each
    cost real time, so nothing is proposed when more than `max_batch` sequences decode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine.ngram_index import NgramIndex

METHODS = ("ngram", "draft_model", "draft")  # "draft": vLLM's older name of draft_model


# The startup check's default limit per method, in one-token steps: a speculative step
# pays when it keeps more tokens than it costs. Measured on the shipped model (AMD Zen 5,
# docs/PERFORMANCE.md), n-gram lookup on ordinary prompts: compiled, at a measured cost of
# 1.68x it gained 1.52x, at 2.0x it lost (0.94x); the distilled draft, eager, at 2.5x
# gained 1.35x (it keeps more tokens a step, about 3.4).
DEFAULT_VERIFY_COST = {"ngram": 2.0, "draft_model": 3.0}


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    max_batch: int = 4  # no proposals when more sequences than this decode in a step
    cooldown: int = 2  # steps a sequence waits after a fully rejected proposal (doubling)
    # Startup check (app/engine/engine.py): speculation stays on only where a step scoring
    # k + 1 tokens (and a draft's k forwards) costs at most this many one-token steps,
    # measured; null: no check; unset: the method's own (DEFAULT_VERIFY_COST).
    max_verify_cost: float | None = -1.0
    # draft_model: the draft's checkpoint directory, or the name of another model this
    # server serves (resolved to its directory at startup: app.main)
    model: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative method {self.method!r} is not supported "
                             f"(one of {list(METHODS)})")
        if self.uses_draft_model and not self.model:
            raise ValueError(f"speculative method {self.method!r} needs \"model\": the "
                             "draft's checkpoint directory (or a served model's name)")
        if not self.uses_draft_model and self.model:
            raise ValueError("\"model\" is for the draft_model method (method "
                             f"{self.method!r} needs no model)")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ValueError("num_speculative_tokens must be in [1, 16]")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("need 1 <= prompt_lookup_min <= prompt_lookup_max")
        if self.max_batch < 1 or self.cooldown < 0:
            raise ValueError("max_batch must be >= 1 and cooldown >= 0")
        if self.max_verify_cost is not None and self.max_verify_cost <= 0 and (
                self.max_verify_cost != -1.0):
            raise ValueError("max_verify_cost must be > 0 (or null: no startup check)")

    @classmethod
    def parse(cls, text: str) -> SpeculativeConfig:
        """vLLM's --speculative-config JSON, e.g. {"method": "ngram",
        "num_speculative_tokens": 4, "prompt_lookup_max": 4}."""
        try:
            fields: Any = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--speculative-config is not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise ValueError("--speculative-config must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"--speculative-config: unknown field(s) {unknown} "
                             f"(known: {sorted(known)})")
        if "model" in fields and "method" not in fields:  # vLLM infers it the same way
            fields["method"] = "draft_model"
        return cls(**fields)

    def verify_cost_limit(self) -> float | None:
        """max_verify_cost, or the method's default when it was not given."""
        if self.max_verify_cost == -1.0:
            return DEFAULT_VERIFY_COST["draft_model" if self.uses_draft_model else "ngram"]
        return self.max_verify_cost

    @property
    def uses_draft_model(self) -> bool:
        return self.method in ("draft_model", "draft")

    def describe(self) -> str:
        """One line for the log and /v1/info."""
        k = self.num_speculative_tokens
        how = (f"draft model {self.model}" if self.uses_draft_model
               else f"lookup {self.prompt_lookup_min}-{self.prompt_lookup_max}")
        return (f"{'draft_model' if self.uses_draft_model else self.method}: {k} tokens, "
                f"{how}, up to {self.max_batch} decoding sequences")


def propose_ngram(tokens: Sequence[int], k: int, n_min: int, n_max: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the longest
    suffix of `tokens` (n_max down to n_min tokens) that occurred before; [] if none.
    The definition, as a scan; the engine proposes through an incremental index that
    gives the same answer (app.engine.ngram_index)."""
    size = len(tokens)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        suffix = list(tokens[size - n:])
        first = suffix[0]
        # scan backwards: the most recent match predicts best; the suffix itself is
        # excluded (it would propose nothing)
        for start in range(size - n - 1, -1, -1):
            if tokens[start] == first and list(tokens[start:start + n]) == suffix:
                follow = list(tokens[start + n:start + n + k])
                if follow:
                    return follow
    return []


@dataclass
class SpecState:
    """One sequence's back-off state."""

    wait: int = 0  # steps left before the next proposal
    penalty: int = 0  # the next wait after a full rejection
    index: NgramIndex | None = None  # ngram: the sequence's n-grams (app.engine.ngram_index)
    # draft_model: the draft's guesses, made when the sequence held `offered_at` tokens
    offered: tuple[int, ...] = ()
    offered_at: int = -1


@dataclass
class Proposer:
    config: SpeculativeConfig
    states: dict[int, SpecState] = field(default_factory=dict)  # by seq_id
    # vLLM's spec_decode counters: proposals, guessed tokens, kept ones, kept by position
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)

    def propose(self, seq_id: int, tokens: Sequence[int], room: int) -> list[int]:
        """At most `room` guesses for sequence `seq_id` (room: tokens it may still take
        beyond the next one)."""
        state = self.states.setdefault(seq_id, SpecState())
        offered, offered_at = state.offered, state.offered_at
        state.offered, state.offered_at = (), -1
        if state.wait > 0:
            state.wait -= 1
            return []
        k = min(self.config.num_speculative_tokens, room)
        if k <= 0:
            return []
        if self.config.uses_draft_model:
            # guesses made for exactly these tokens (not before a preemption, say)
            return list(offered[:k]) if offered_at == len(tokens) else []
        if state.index is None:
            state.index = NgramIndex(self.config.prompt_lookup_min,
                                     self.config.prompt_lookup_max)
        return state.index.propose(tokens, k)

    def wants_guesses(self, seq_id: int) -> bool:
        """Whether a draft model should guess for this sequence after this step: not
        while it waits out a back-off (the guesses would be thrown away)."""
        state = self.states.get(seq_id)
        return state is None or state.wait == 0

    def offer(self, seq_id: int, num_tokens: int, guesses: tuple[int, ...]) -> None:
        """The draft model's guesses for the sequence once it holds `num_tokens` tokens."""
        state = self.states.setdefault(seq_id, SpecState())
        state.offered, state.offered_at = guesses, num_tokens

    def observe(self, seq_id: int, proposed: int, accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += proposed
        self.num_accepted_tokens += accepted
        while len(self.accepted_per_position) < proposed:
            self.accepted_per_position.append(0)
        for position in range(accepted):
            self.accepted_per_position[position] += 1
        state = self.states.setdefault(seq_id, SpecState())
        if proposed and not accepted:
            state.penalty = max(self.config.cooldown, 2 * state.penalty)
            state.wait = state.penalty
        elif accepted:
            state.penalty = 0

    def forget(self, seq_id: int) -> None:
        self.states.pop(seq_id, None)
