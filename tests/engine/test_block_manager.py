from __future__ import annotations

import pytest

from engine.block_manager import PADDING_BLOCK_ID, BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence


def seq(tokens: list[int], rid: str = "r") -> Sequence:
    return Sequence(rid, tokens, SamplingParams(), seed=0)


def test_allocate_and_free_account_for_every_block():
    bm = BlockManager(num_blocks=9, block_size=4)
    assert bm.num_usable_blocks == bm.num_free_blocks == 8
    s = seq(list(range(10)))  # 3 blocks
    assert bm.can_allocate(s)
    bm.allocate(s)
    assert len(s.block_table) == 3 and PADDING_BLOCK_ID not in s.block_table
    assert bm.num_free_blocks == 5
    bm.free(s)
    assert bm.num_free_blocks == 8 and not s.block_table


def test_padding_block_is_never_handed_out():
    bm = BlockManager(num_blocks=4, block_size=2)
    s = seq(list(range(6)))
    bm.allocate(s)
    assert sorted(s.block_table) == [1, 2, 3]
    assert not bm.can_allocate(seq([1, 2], "other"))


def test_prefix_reuse_after_blocks_are_computed():
    bm = BlockManager(num_blocks=16, block_size=4)
    prompt = list(range(100, 113))  # 13 tokens: 3 full blocks + 1
    a = seq(prompt, "a")
    bm.allocate(a)
    assert a.num_cached_tokens == 0
    # Not yet computed: nothing may be reused.
    b = seq(prompt, "b")
    bm.allocate(b)
    assert b.num_cached_tokens == 0
    bm.free(b)
    a.num_computed_tokens = 13
    bm.publish_computed_blocks(a)
    c = seq([*prompt[:12], 7, 8, 9], "c")
    bm.allocate(c)
    assert c.num_cached_tokens == 12 and c.num_computed_tokens == 12
    assert c.block_table[:3] == a.block_table[:3]
    assert all(bm.ref_counts[x] == 2 for x in a.block_table[:3])
    bm.free(a)
    bm.free(c)
    assert bm.num_free_blocks == bm.num_usable_blocks


def test_prefix_reuse_leaves_a_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(list(range(8)), "a")
    bm.allocate(a)
    a.num_computed_tokens = 8
    bm.publish_computed_blocks(a)
    bm.free(a)
    again = seq(list(range(8)), "b")
    bm.allocate(again)  # both blocks cached, but the last token must be recomputed
    assert again.num_computed_tokens == 4
    bm.free(again)


def test_freed_cached_blocks_are_revived_then_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)  # 3 usable
    a = seq([1, 2, 3, 4, 5], "a")
    bm.allocate(a)
    a.num_computed_tokens = 5
    bm.publish_computed_blocks(a)
    bm.free(a)
    revived = seq([1, 2, 3, 4, 9], "b")
    assert bm.can_allocate(revived)
    bm.allocate(revived)
    assert revived.num_cached_tokens == 4
    bm.free(revived)
    other = seq([7, 7, 7, 7, 7, 7], "c")  # needs all 3 blocks: evicts the cached ones
    bm.allocate(other)
    assert not bm.hash_to_block
    bm.free(other)


def test_double_free_is_detected():
    bm = BlockManager(num_blocks=4, block_size=2)
    s = seq([1, 2, 3])
    bm.allocate(s)
    table = list(s.block_table)
    bm.free(s)
    s.block_table = table
    with pytest.raises(RuntimeError, match="freed twice"):
        bm.free(s)


def test_append_slots_and_trim():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq([1, 2, 3, 4])
    bm.allocate(s)
    s.token_ids.append(5)
    assert bm.can_append(s)
    bm.append_slots(s)
    assert len(s.block_table) == 2
    bm.trim(s, 4)
    assert len(s.block_table) == 1
    bm.free(s)
    assert bm.num_free_blocks == 7
