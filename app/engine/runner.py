"""ModelRunner: turns a SchedulerOutput into tensors, runs one batched forward over the
paged KV cache, and returns only what postprocessing needs (a few rows of logits).

All sequences of a step share one flat batch (B=1, T=total new tokens): prefill chunks
and single decode tokens side by side, each with its own positions and block table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psutil
import torch
from torch import Tensor

from app.checkpoint import LoadedModel
from app.engine.request import RequestKind
from app.engine.scheduler import ScheduledSeq, SchedulerOutput
from app.modeling.attention import PagedAttention, PagedKVCache, build_paged_batch
from app.modeling.config import Task
from app.modeling.heads import label_scores
from app.sampling import prompt_logprobs

log = logging.getLogger(__name__)


@dataclass
class RunnerOutput:
    # Next-token logits (float32, CPU) of each sequence whose tokens are now all computed.
    logits: Tensor | None = None
    rows: dict[int, int] = field(default_factory=dict)  # seq_id -> row of `logits`
    # Classification scores of finished-prefill CLASSIFY sequences.
    class_scores: dict[int, list[float]] = field(default_factory=dict)
    # SCORE sequences: {position of target token: log P(token | prefix)} for this step.
    score_logprobs: dict[int, dict[int, float]] = field(default_factory=dict)


def kv_cache_blocks(loaded: LoadedModel, block_size: int, max_tokens: int,
                    memory_fraction: float) -> int:
    """Blocks for `max_tokens` tokens, capped by a fraction of the device's free memory."""
    cfg = loaded.config
    per_block = PagedKVCache.bytes_per_block(cfg.num_layers, block_size, cfg.num_kv_heads,
                                             cfg.head_dim, loaded.dtype)
    wanted = -(-max_tokens // block_size)
    if loaded.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(loaded.device)
    else:
        free = psutil.virtual_memory().available
    cap = int(free * memory_fraction) // per_block
    if cap < wanted:
        log.warning("KV cache capped at %d blocks (%.0f MiB) by available memory; "
                    "wanted %d", cap, cap * per_block / 2**20, wanted)
    return max(1, min(wanted, cap))


class ModelRunner:
    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.config = loaded.config
        self.device = loaded.device
        cfg = loaded.config
        self.cache = PagedKVCache(cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads,
                                  cfg.head_dim, loaded.dtype, loaded.device)
        log.info("KV cache: %d blocks of %d tokens, %.1f MiB", num_blocks, block_size,
                 self.cache.nbytes / 2**20)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        items = out.scheduled
        ids: list[int] = []
        positions: list[int] = []
        for item in items:
            end = item.start + item.num_new_tokens
            ids.extend(item.seq.token_ids[item.start:end])
            positions.extend(range(item.start, end))
        batch = build_paged_batch(
            [i.num_new_tokens for i in items],
            [i.start + i.num_new_tokens for i in items],
            [i.seq.block_table for i in items],
            self.cache.block_size,
            self.device,
        )
        input_ids = torch.tensor(ids, device=self.device)[None]
        pos = torch.tensor(positions, device=self.device)[None]
        hidden = self.model(input_ids, pos, PagedAttention(self.cache, batch))[0]  # (T, H)

        result = RunnerOutput()
        offsets = [0]
        for item in items:
            offsets.append(offsets[-1] + item.num_new_tokens)
        last_rows = [(item, offsets[k + 1] - 1) for k, item in enumerate(items)
                     if item.completes_prefill]
        if self.config.task is Task.SEQUENCE_CLASSIFICATION:
            self._classify(hidden, last_rows, result)
            return result
        wanted = [(item, row) for item, row in last_rows if item.seq.kind is not RequestKind.SCORE]
        if wanted:
            index = torch.tensor([row for _, row in wanted], device=self.device)
            result.logits = self.model.logits(hidden[index]).float().cpu()
            result.rows = {item.seq.seq_id: k for k, (item, _) in enumerate(wanted)}
        for k, item in enumerate(items):
            if item.seq.kind is RequestKind.SCORE:
                self._score(hidden[offsets[k]:offsets[k + 1]], item, result)
        return result

    def _classify(self, hidden: Tensor, last_rows: list[tuple[ScheduledSeq, int]],
                  result: RunnerOutput) -> None:
        if not last_rows:
            return
        index = torch.tensor([row for _, row in last_rows], device=self.device)
        scores = label_scores(self.model.classify(hidden[index]), self.config.problem_type)
        for (item, _), row in zip(last_rows, scores.cpu().tolist(), strict=True):
            result.class_scores[item.seq.seq_id] = row

    def _score(self, hidden: Tensor, item: ScheduledSeq, result: RunnerOutput) -> None:
        # Position p predicts token p + 1; keep the predictions of target tokens only.
        seq = item.seq
        first = max(item.start, (seq.score_from or 1) - 1)
        last = min(item.start + item.num_new_tokens, len(seq.token_ids) - 1)  # exclusive
        if first >= last:
            return
        rows = hidden[first - item.start:last - item.start]
        targets = torch.tensor(seq.token_ids[first + 1:last + 1], device=self.device)
        values = prompt_logprobs(self.model.logits(rows), targets).cpu().tolist()
        result.score_logprobs[seq.seq_id] = dict(enumerate(values, start=first + 1))
