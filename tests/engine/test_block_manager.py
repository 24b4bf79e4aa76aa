from __future__ import annotations

import random

import pytest

from engine import prefix_block_hashes
from engine.block_events import BlockEvent
from engine.block_manager import PADDING_BLOCK_ID, BlockManager
from engine.buckets import BucketConfig
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.shapes import StepShaper


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


# -- block hashes and the events that mirror the prefix cache --------------------------


def computed(bm: BlockManager, s: Sequence) -> Sequence:
    """Pretend s's whole allocation was prefilled, and publish its full blocks."""
    s.num_computed_tokens = s.num_tokens
    bm.publish_computed_blocks(s)
    return s


def test_published_hashes_are_prefix_block_hashes():
    bm = BlockManager(num_blocks=16, block_size=4)
    prompt = list(range(500, 515))  # 3 full blocks + 3
    a = seq(prompt, "a")
    bm.allocate(a)
    computed(bm, a)
    assert [bm.block_hashes[b] for b in a.block_table[:3]] == prefix_block_hashes(prompt, 4)
    assert bm.block_hashes[a.block_table[3]] is None
    assert bm.cached_block_hashes() == set(prefix_block_hashes(prompt, 4))
    bm.free(a)


def test_chunked_publishing_continues_the_chain():
    bm = BlockManager(num_blocks=16, block_size=4)
    prompt = list(range(30))
    a = seq(prompt, "a")
    bm.allocate(a)
    for done in (5, 13, 30):  # prefill in chunks that end mid-block
        a.num_computed_tokens = done
        bm.publish_computed_blocks(a)
    assert [bm.block_hashes[b] for b in a.block_table[:7]] == prefix_block_hashes(prompt, 4)
    bm.free(a)


def test_events_number_each_store_and_eviction():
    bm = BlockManager(num_blocks=4, block_size=2)  # 3 usable
    a = computed(bm, allocated(bm, [1, 2, 3, 4, 5], "a"))
    bm.free(a)
    first, second = prefix_block_hashes([1, 2, 3, 4], 2)
    batch = bm.drain_events()
    assert batch == ([(0, "stored", first), (1, "stored", second)], 2, False)
    other = allocated(bm, [7, 7, 7, 7, 7, 7], "c")  # takes every block: evicts both
    batch = bm.drain_events()
    assert sorted(e.block_hash for e in batch.events) == sorted([first, second])
    assert [e.seq for e in batch.events] == [2, 3]
    assert {e.kind for e in batch.events} == {"evicted"} and batch.next_seq == 4
    assert bm.drain_events() == ([], 4, False)
    bm.free(other)


def test_duplicate_content_is_stored_once():
    bm = BlockManager(num_blocks=8, block_size=2)
    a = allocated(bm, [1, 2, 3], "a")
    b = allocated(bm, [1, 2, 3], "b")  # admitted before a's KV was written: no reuse
    computed(bm, a)
    computed(bm, b)
    assert [e.kind for e in bm.drain_events().events] == ["stored"]
    bm.free(b)
    bm.free(a)
    assert bm.cached_block_hashes() == set(prefix_block_hashes([1, 2], 2))


def test_no_events_without_prefix_caching():
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    bm.free(computed(bm, allocated(bm, [1, 2, 3, 4, 5], "a")))
    assert bm.drain_events() == ([], 0, False)
    assert bm.cached_block_hashes() == set()


def allocated(bm: BlockManager, tokens: list[int], rid: str) -> Sequence:
    s = seq(tokens, rid)
    bm.allocate(s)
    return s


class Workload:
    """Random requests over a few shared prefixes, run through the real scheduler on a
    cache small enough to evict and preempt; steps pretend the model ran (as the engine
    does: advance computed tokens, publish, append a token, finish at a length)."""

    def __init__(self, seed: int, num_blocks: int = 24, **bm_kwargs):
        block_size = 4
        buckets = BucketConfig.from_limits(
            max_num_seqs=6, max_model_len=64, block_size=block_size, max_num_batched_tokens=32
        )
        self.bm = BlockManager(num_blocks, block_size, **bm_kwargs)
        self.sched = Scheduler(self.bm, 6, StepShaper(buckets, block_size))
        self.rng = random.Random(seed)
        self.prefixes = [
            [self.rng.randrange(1000) for _ in range(self.rng.choice((4, 9, 16)))] for _ in range(4)
        ]
        self.num_requests = 0
        self.target_len: dict[str, int] = {}

    def add_request(self) -> None:
        prompt = self.rng.choice(self.prefixes) + [
            self.rng.randrange(1000) for _ in range(self.rng.randrange(1, 10))
        ]
        rid = f"r{self.num_requests}"
        self.num_requests += 1
        self.target_len[rid] = len(prompt) + self.rng.randrange(1, 24)
        self.sched.add(Sequence(rid, prompt, SamplingParams(), seed=0))

    def step(self, arrivals: bool = True) -> None:
        if arrivals and (self.rng.random() < 0.4 or not self.sched.has_unfinished):
            self.add_request()
        out = self.sched.schedule()
        for item in out.scheduled if out else ():
            s = item.seq
            if not item.is_sampled:
                s.num_computed_tokens += item.num_tokens
                self.bm.publish_computed_blocks(s)
                continue
            s.token_ids.append(self.rng.randrange(1000))
            s.num_computed_tokens = s.num_tokens - 1
            self.bm.publish_computed_blocks(s)
            if s.num_tokens >= self.target_len[s.request_id]:
                self.sched.finish(s)

    def run_to_completion(self) -> None:
        while self.sched.has_unfinished:
            self.step(arrivals=False)


def apply(mirror: set[int], batch, expected_seq: int) -> int:
    for event in batch.events:
        assert event.seq == expected_seq
        expected_seq += 1
        if event.kind == "stored":
            assert event.block_hash not in mirror
            mirror.add(event.block_hash)
        else:
            assert event.kind == "evicted"
            mirror.remove(event.block_hash)
    assert batch.next_seq == expected_seq
    return expected_seq


@pytest.mark.parametrize("seed", range(6))
def test_events_mirror_the_cache_under_random_workloads(seed):
    w = Workload(seed)
    mirror: set[int] = set()
    next_seq = 0
    evicted = False
    for step in range(400):
        w.step()
        if step % w.rng.choice((1, 3, 7)) == 0:
            batch = w.bm.drain_events()
            assert not batch.overflowed
            evicted |= any(e.kind == "evicted" for e in batch.events)
            next_seq = apply(mirror, batch, next_seq)
            assert mirror == w.bm.cached_block_hashes()
    w.run_to_completion()
    next_seq = apply(mirror, w.bm.drain_events(), next_seq)
    assert mirror == w.bm.cached_block_hashes()
    # The workload exercised what it is for.
    assert evicted and w.sched.num_preemptions and w.bm.num_prefix_hits_tokens
    assert w.bm.num_free_blocks == w.bm.num_usable_blocks


def test_overflow_then_resync_from_a_snapshot_is_exact():
    w = Workload(seed=11, max_pending_events=8)
    for _ in range(100):  # nobody drains: the log overflows and keeps nothing
        w.step()
    batch = w.bm.drain_events()
    assert batch.overflowed and batch.events == [] and batch.next_seq > 8
    mirror, next_seq = w.bm.cached_block_hashes(), batch.next_seq  # the same moment
    for _ in range(200):
        w.step()
        batch = w.bm.drain_events()
        if batch.overflowed:
            mirror, next_seq = w.bm.cached_block_hashes(), batch.next_seq
        else:
            next_seq = apply(mirror, batch, next_seq)
        assert mirror == w.bm.cached_block_hashes()
    w.run_to_completion()


def test_max_pending_events_is_checked():
    with pytest.raises(ValueError, match="max_pending"):
        BlockManager(num_blocks=4, block_size=2, max_pending_events=0)


def test_a_sequence_keeps_its_block_hashes_and_a_given_chain_changes_nothing():
    """Each block of a sequence is hashed once (Sequence.prefix_hashes); a chain handed
    in beforehand (the fleet simulator's, from the router's hashes) gives the same cache."""
    prompt = list(range(100, 123))  # 5 full blocks + 3
    plain, seeded = BlockManager(num_blocks=32, block_size=4), BlockManager(32, 4)
    a = allocated(plain, prompt, "a")
    b = seq(prompt, "b")
    b.prefix_hashes = prefix_block_hashes(prompt, 4, num_blocks=(len(prompt) - 1) // 4)
    seeded.allocate(b)
    for s, bm in ((a, plain), (b, seeded)):
        computed(bm, s)
        s.token_ids += [7] * 9  # decode on into two more blocks
        s.num_computed_tokens = s.num_tokens - 1
        bm.append_slots(s)
        bm.publish_computed_blocks(s)
        assert s.prefix_hashes == prefix_block_hashes(s.token_ids, 4)[: s.num_hashed_blocks]
    assert plain.drain_events() == seeded.drain_events()
    assert plain.cached_block_hashes() == seeded.cached_block_hashes()


def test_drained_events_are_block_events():
    bm = BlockManager(num_blocks=8, block_size=2)
    computed(bm, allocated(bm, [1, 2, 3], "a"))
    (event,) = bm.drain_events().events
    assert isinstance(event, BlockEvent) and event.kind == "stored" and event.seq == 0
