"""Block manager: allocation, freeing, prefix hits and misses, eviction, forks. No torch."""

from __future__ import annotations

import random

from app.engine.block_manager import BlockManager
from app.engine.request import RequestKind, TokenSequence
from app.sampling_params import SamplingParams


def seq(tokens: list[int], request_id: str = "r") -> TokenSequence:
    return TokenSequence(request_id=request_id, kind=RequestKind.GENERATE, token_ids=list(tokens),
                    num_prompt_tokens=len(tokens), params=SamplingParams())


def compute(bm: BlockManager, s: TokenSequence, n: int) -> None:
    """Allocate and 'compute' n more tokens, as a scheduled step would."""
    assert bm.ensure_slots(s, n)
    s.num_computed += n
    bm.commit(s)
    bm.check_invariants()


def test_allocate_and_free_accounting() -> None:
    bm = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    a = seq(list(range(10)))
    compute(bm, a, 10)
    assert len(a.block_table) == 3 and bm.num_used == 3 and bm.num_free == 7
    assert not bm.ensure_slots(seq(list(range(40))), 40)  # all or nothing
    assert bm.num_used == 3
    bm.free(a)
    bm.check_invariants()
    assert bm.num_free == 10 and bm.num_used == 0 and bm.num_cached == 0


def test_prefix_hit_miss_and_last_token_recomputed() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(list(range(12)))
    compute(bm, a, 12)
    bm.free(a)
    assert bm.num_cached == 3 and bm.num_used == 0
    # Same 12 tokens: 2 full blocks hit; the third holds the last token, recomputed.
    b = seq(list(range(12)))
    assert bm.admit(b) == 8
    assert bm.num_used == 2 and bm.num_cached == 1
    # Shares the first block only; the second differs.
    c = seq([0, 1, 2, 3, 99, 5, 6, 7, 8])
    assert bm.admit(c) == 4
    assert b.block_table[0] == c.block_table[0]
    assert bm.blocks[b.block_table[0]].ref_count == 2
    # Different first token: no hit at all (hashes chain from the start).
    d = seq([7, 1, 2, 3, 4, 5, 6, 7, 8])
    assert bm.admit(d) == 0
    bm.check_invariants()


def test_cache_salt_separates_prefixes() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    tokens = list(range(12))
    a = seq(tokens)
    a.cache_salt = "alice"
    compute(bm, a, 12)
    bm.free(a)
    for salt, hit in ((None, 0), ("bob", 0), ("alice", 8)):
        other = seq(tokens)
        other.cache_salt = salt
        assert bm.admit(other) == hit, salt
        bm.free(other)
    plain = seq(tokens)
    compute(bm, plain, 12)  # unsalted blocks are their own namespace too
    bm.free(plain)
    salted = seq(tokens)
    salted.cache_salt = "bob"
    assert bm.admit(salted) == 0
    bm.check_invariants()


def test_lru_eviction_keeps_accounting_exact() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    old, new = seq([1, 2, 3, 4, 5]), seq([9, 8, 7, 6, 5])
    compute(bm, old, 5)
    bm.free(old)
    compute(bm, new, 5)
    bm.free(new)
    assert bm.num_cached == 4 and bm.num_free == 2
    # Needing 4 blocks: 2 free ones, then the least recently freed cached: old's.
    big = seq(list(range(100, 108)))
    compute(bm, big, 8)
    assert bm.num_used == 4
    assert bm.admit(seq([1, 2, 3, 4, 5])) == 0  # evicted
    again = seq([9, 8, 7, 6, 5])
    assert bm.admit(again) == 4  # survived
    bm.check_invariants()


def test_fork_shares_full_prompt_blocks() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    parent = seq(list(range(10)))
    compute(bm, parent, 10)
    child = seq(list(range(10)))
    bm.fork(parent, child)
    assert child.block_table == parent.block_table[:2] and child.num_computed == 8
    assert [bm.blocks[b].ref_count for b in parent.block_table] == [2, 2, 1]
    bm.free(parent)
    bm.free(child)
    bm.check_invariants()
    assert bm.num_used == 0


def test_random_workload_never_breaks_invariants() -> None:
    rng = random.Random(0)
    bm = BlockManager(num_blocks=40, block_size=4)
    live: list[TokenSequence] = []
    prefixes = [[rng.randrange(50) for _ in range(12)] for _ in range(3)]
    for _ in range(500):
        action = rng.random()
        if action < 0.4:
            s = seq(rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 9))])
            bm.admit(s)
            if bm.ensure_slots(s, len(s) - s.num_computed):
                s.num_computed = len(s)
                bm.commit(s)
                live.append(s)
            else:
                bm.free(s)
        elif action < 0.7 and live:
            s = rng.choice(live)
            s.token_ids.append(rng.randrange(50))
            if bm.ensure_slots(s, 1):
                s.num_computed += 1
                bm.commit(s)
            else:
                s.token_ids.pop()
        elif live:
            bm.free(live.pop(rng.randrange(len(live))))
        bm.check_invariants()
    for s in live:
        bm.free(s)
    bm.check_invariants()
    assert bm.num_used == 0
