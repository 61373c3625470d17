"""Paged KV-cache bookkeeping: fixed-size blocks, per-sequence block tables, reference
counts and a prefix cache. Pure Python (no torch): the runner owns the tensors.

Every block is in exactly one state, so free + used + cached == total always holds:
  free    ref_count 0, no content worth keeping
  used    ref_count > 0 (in some sequence's block table)
  cached  ref_count 0 but holds a full, hashed block of tokens; reusable on a prefix hit
          and evicted least-recently-freed first when a free block is needed.

A full block's hash chains its parent's hash with its own tokens, so equal hashes mean
equal prefixes; on a hit we also compare the stored tokens, parent and salt, so a hash
collision can never serve the wrong keys and values.

A sequence's cache salt (a per-request `cache_salt`, or one derived from the caller's API
key) seeds the chain: sequences with different salts never share a block, so one caller
cannot learn from cache hits (`cached_tokens`, latency) what another caller sent.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from app.engine.kv_events import BlockRemoved, BlockStored, KVEventLog
from app.engine.request import TokenSequence


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    # What the hash stands for, compared on every hit: (parent hash, salt, tokens).
    key: tuple[int | None, str | None, tuple[int, ...]] | None = None


def chain_hash(parent: int | None, salt: str | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, salt, tokens))


def _check(ok: bool, what: str) -> None:
    # Not `assert`: invariant checks must hold under `python -O` too.
    if not ok:
        raise AssertionError(f"block manager invariant broken: {what}")


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True
                 ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))
        self._cached: OrderedDict[int, None] = OrderedDict()  # LRU: oldest first
        self._by_hash: dict[int, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up at first admissions
        self.prefix_hits = 0  # of which found in the prefix cache
        self.events = KVEventLog()  # for prefix-aware routers (app/engine/kv_events.py)

    # ------------------------------------------------------------------ accounting

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free - self.num_cached

    @property
    def num_available(self) -> int:
        """Blocks a new allocation can take: free ones, then evictable cached ones."""
        return self.num_free + self.num_cached

    @property
    def usage(self) -> float:
        return self.num_used / self.num_blocks

    def check_invariants(self) -> None:
        """Raise AssertionError if the states disagree with the reference counts."""
        used = sum(1 for b in self.blocks if b.ref_count > 0)
        _check(all(b.ref_count >= 0 for b in self.blocks), "negative reference count")
        _check(used == self.num_used, f"{used} blocks referenced, {self.num_used} counted")
        _check(self.num_free + self.num_cached + used == self.num_blocks, "states != total")
        _check(all(self.blocks[i].ref_count == 0 and self.blocks[i].hash is not None
                   for i in self._cached), "cached block referenced or unhashed")
        _check(all(self.blocks[i].ref_count == 0 for i in self._free),
               "free block referenced")
        _check(all(self.blocks[i].hash == h for h, i in self._by_hash.items()),
               "hash index disagrees with its blocks")

    # ------------------------------------------------------------------ allocation

    def _take(self) -> int:
        if self._free:
            return self._free.popleft()
        block_id, _ = self._cached.popitem(last=False)  # evict the least recently freed
        block = self.blocks[block_id]
        if block.hash is not None:
            del self._by_hash[block.hash]
            self.events.record(BlockRemoved([block.hash]))
        block.hash, block.key = None, None
        return block_id

    def _ref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self._cached.pop(block_id, None)
        block.ref_count += 1

    def blocks_needed(self, seq: TokenSequence, num_new_tokens: int) -> int:
        total = seq.num_computed + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def max_new_tokens_fitting(self, seq: TokenSequence, reserve: int = 0) -> int:
        """How many more tokens `seq` could compute with the blocks available now."""
        room = len(seq.block_table) * self.block_size - seq.num_computed
        return room + max(0, self.num_available - reserve) * self.block_size

    def ensure_slots(self, seq: TokenSequence, num_new_tokens: int) -> bool:
        """Give `seq` blocks for `num_new_tokens` more tokens; all or nothing."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_available:
            return False
        for _ in range(needed):
            block_id = self._take()
            self.blocks[block_id].ref_count = 1
            seq.block_table.append(block_id)
        return True

    def admit(self, seq: TokenSequence) -> int:
        """Attach the longest cached prefix of a sequence with no blocks yet; returns the
        number of tokens served from the cache. The last token is always recomputed, since
        its logits are needed."""
        if seq.block_table or seq.num_computed:
            raise ValueError(f"sequence {seq.seq_id} already holds blocks")
        if not self.enable_prefix_caching:
            return 0
        size = self.block_size
        end = len(seq.token_ids) - 1
        if seq.score_from is not None:
            # Scored positions need their logits computed, so they cannot come from cache.
            end = min(end, seq.score_from - 1)
        lookable = max(0, end) // size
        parent: int | None = None
        salt = seq.cache_salt
        for i in range(lookable):
            tokens = tuple(seq.token_ids[i * size:(i + 1) * size])
            h = chain_hash(parent, salt, tokens)
            block_id = self._by_hash.get(h)
            if block_id is None or self.blocks[block_id].key != (parent, salt, tokens):
                break
            self._ref(block_id)
            seq.block_table.append(block_id)
            parent = h
        seq.num_computed = len(seq.block_table) * size
        return seq.num_computed

    def record_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        """Count one admission's prefix-cache lookup (the hit-rate metric); called once
        per sequence, not on admission retries or recomputes after preemption."""
        self.prefix_queries += prompt_tokens
        self.prefix_hits += hit_tokens

    def commit(self, seq: TokenSequence) -> None:
        """Register the hashes of blocks that `seq` has now filled and computed."""
        if not self.enable_prefix_caching:
            return
        size = self.block_size
        full = min(seq.num_computed, len(seq.token_ids)) // size
        if full == 0 or self.blocks[seq.block_table[full - 1]].hash is not None:
            # Hashes are given in order, so a hashed last full block means nothing new:
            # the common decode step exits here instead of walking the whole table.
            return
        parent: int | None = None
        salt = seq.cache_salt
        stored: list[int] = []
        first_parent: int | None = None
        for i in range(full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is not None:
                parent = block.hash
                continue
            tokens = tuple(seq.token_ids[i * size:(i + 1) * size])
            h = chain_hash(parent, salt, tokens)
            if h in self._by_hash:
                # Another sequence computed the same block meanwhile: keep this copy
                # private; hashing later blocks would chain from a block nobody can find.
                break
            block.hash, block.key = h, (parent, salt, tokens)
            self._by_hash[h] = block.block_id
            if not stored:
                first_parent = parent
            stored.append(h)
            parent = h
        if stored:
            start = full - len(stored)
            self.events.record(BlockStored(
                stored, first_parent, list(seq.token_ids[start * size:full * size]), size,
                seq.adapter))

    def fork(self, parent: TokenSequence, child: TokenSequence) -> None:
        """Let `child` share the parent's full, computed blocks (the prompt's); the
        partial last block is recomputed by the child, so no K/V copy is needed."""
        if child.block_table:
            raise ValueError(f"sequence {child.seq_id} already holds blocks")
        shared = min(parent.num_computed, child.num_prompt_tokens) // self.block_size
        for block_id in parent.block_table[:shared]:
            self._ref(block_id)
            child.block_table.append(block_id)
        child.num_computed = shared * self.block_size

    def free(self, seq: TokenSequence) -> None:
        """Release a sequence's blocks. Hashed blocks stay reusable until evicted; the
        tail is freed first so it is evicted first (prefixes are the shared part)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            _check(block.ref_count >= 0, f"block {block_id} freed more often than taken")
            if block.ref_count == 0:
                if block.hash is not None:
                    self._cached[block_id] = None
                else:
                    self._free.append(block_id)
        seq.block_table = []
        seq.num_computed = 0

