"""RunnerOutput: what one step's forward and sampling hand back to the event loop, as
plain values (no tensors), so the output processor reads it without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.sampling_params import Sampled


@dataclass
class RunnerOutput:
    sampled: list[Sampled] = field(default_factory=list)  # one per SamplingPlan.draws
    # Speculative decoding: seq_id -> the tokens kept after its sampled one (the kept
    # guesses but the first, and the target's own last token), and (guesses, kept).
    # Multi-step decoding: seq_id -> the tokens the later steps sampled.
    extra_tokens: dict[int, list[Sampled]] = field(default_factory=dict)
    drafts: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Speculative decoding with a draft model: seq_id -> (the number of tokens the
    # sequence holds after this step, the draft's guesses of the tokens after them).
    guesses: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    # PREDICT: seq_id -> [(token_id, prob, logprob)], most likely first.
    distributions: dict[int, list[tuple[int, float, float]]] = field(default_factory=dict)
    # CLASSIFY: seq_id -> scores of finished-prefill sequences.
    class_scores: dict[int, list[float]] = field(default_factory=dict)
    # SCORE: seq_id -> {position of target token: log P(token | prefix)} for this step.
    score_logprobs: dict[int, dict[int, float]] = field(default_factory=dict)
    # SCORE with top_logprobs: seq_id -> {position: [(token_id, logprob, rank)]}, the
    # prompt's own token first, then the most likely others.
    score_top: dict[int, dict[int, list[tuple[int, float, int]]]] = field(default_factory=dict)
    # EMBED: seq_id -> (sum of this chunk's final hidden states, the chunk's last one).
    embeddings: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)
