"""The prefix index mirrors real block managers through their events and snapshots."""

from __future__ import annotations

import random

import pytest

from autoscale.prefix_index import EVICTED, STORED, PrefixIndex
from engine import prefix_block_hashes
from engine.block_events import BlockEvent
from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

BLOCK = 4


class Replica:
    """A real block manager under a random workload over shared prompt prefixes."""

    def __init__(self, seed: int, prompts: list[list[int]], **bm_kwargs):
        self.bm = BlockManager(num_blocks=20, block_size=BLOCK, **bm_kwargs)
        self.rng = random.Random(seed)
        self.prompts = prompts
        self.live: list[Sequence] = []

    def step(self) -> None:
        rng = self.rng
        tokens = rng.choice(self.prompts) + [rng.randrange(1000) for _ in range(rng.randrange(6))]
        s = Sequence("r", tokens, SamplingParams(), seed=0)
        if self.bm.can_allocate(s) and (not self.live or rng.random() < 0.6):
            self.bm.allocate(s)
            s.num_computed_tokens = s.num_tokens
            self.bm.publish_computed_blocks(s)
            self.live.append(s)
        elif self.live:
            self.bm.free(self.live.pop(rng.randrange(len(self.live))))

    def leading_cached_blocks(self, hashes: list[int]) -> int:
        cached = self.bm.cached_block_hashes()
        return next((i for i, h in enumerate(hashes) if h not in cached), len(hashes))


def shared_prompts(rng: random.Random) -> list[list[int]]:
    base = [rng.randrange(1000) for _ in range(24)]
    return [
        base[:n] + [rng.randrange(1000) for _ in range(extra)]
        for n in (8, 16, 24)
        for extra in (0, 5, 12)
    ]


def sync(index: PrefixIndex, name: str, replica: Replica) -> bool:
    """What a replica would ship: a drained batch, and a snapshot when it overflowed.
    Returns whether it overflowed."""
    batch = replica.bm.drain_events()
    index.apply_events(name, batch.events, batch.next_seq)
    if batch.overflowed:
        assert index.needs_snapshot(name)
        index.apply_snapshot(name, replica.bm.cached_block_hashes(), batch.next_seq)
    assert not index.needs_snapshot(name)
    return batch.overflowed


@pytest.mark.parametrize("seed", range(4))
def test_index_answers_as_the_caches_hold(seed):
    rng = random.Random(seed)
    prompts = shared_prompts(rng)
    replicas = {
        "a": Replica(seed, prompts),
        "b": Replica(seed + 100, prompts),
        "c": Replica(seed + 200, prompts, max_pending_events=6),  # overflows now and then
    }
    index = PrefixIndex()
    overflowed = set()
    for _ in range(300):
        for replica in replicas.values():
            replica.step()
        for name, replica in replicas.items():
            if sync(index, name, replica):
                overflowed.add(name)
        for prompt in prompts:
            hashes = prefix_block_hashes(prompt, BLOCK)
            matched = index.match(hashes)
            for name, replica in replicas.items():
                truth = replica.leading_cached_blocks(hashes)
                assert matched.get(name, 0) == truth
                assert index.num_cached_blocks(name, hashes) == truth
    for name, replica in replicas.items():
        assert index.num_blocks(name) == len(replica.bm.cached_block_hashes())
    assert overflowed == {"c"}


def events(first_seq: int, kinds_and_hashes) -> list[BlockEvent]:
    return [BlockEvent(first_seq + i, k, h) for i, (k, h) in enumerate(kinds_and_hashes)]


def test_leading_blocks_stop_at_the_first_missing_one():
    index = PrefixIndex()
    index.apply_snapshot("a", [1, 2, 4], next_seq=0)
    index.apply_snapshot("b", [2, 3], next_seq=0)
    index.apply_snapshot("c", [1, 2, 3, 4], next_seq=0)
    assert index.match([1, 2, 3, 4]) == {"a": 2, "c": 4}  # b lacks block 0: holds none
    assert index.match([9, 1]) == {}
    assert index.match([]) == {}
    assert index.num_cached_blocks("b", [2, 3]) == 2


def test_a_gap_marks_the_replica_stale_until_a_snapshot():
    index = PrefixIndex()
    index.apply_events("a", events(0, [(STORED, 1), (STORED, 2)]), next_seq=2)
    assert not index.needs_snapshot("a")
    index.apply_events("a", events(5, [(STORED, 3)]), next_seq=6)  # events 2..4 lost
    assert index.needs_snapshot("a")
    assert index.match([1, 2, 3]) == {"a": 3}  # still answers from what it knows
    index.apply_events("a", [], next_seq=9)  # an overflowed batch: nothing but the count
    assert index.needs_snapshot("a")
    index.apply_snapshot("a", [1, 7], next_seq=9)
    assert not index.needs_snapshot("a")
    assert index.match([1, 2]) == {"a": 1} and index.match([3]) == {}
    index.apply_events("a", events(7, [(EVICTED, 1), (STORED, 8)]), next_seq=9)  # overtaken
    assert index.match([1]) == {"a": 1} and not index.needs_snapshot("a")
    index.apply_events("a", events(9, [(EVICTED, 1)]), next_seq=10)
    assert index.match([1]) == {} and not index.needs_snapshot("a")


def test_a_batch_with_no_new_events_keeps_the_replica_exact():
    index = PrefixIndex()
    index.apply_events("a", [], next_seq=0)
    index.apply_events("a", events(0, [(STORED, 1)]), next_seq=1)
    index.apply_events("a", [], next_seq=1)
    assert not index.needs_snapshot("a") and index.num_blocks("a") == 1


def test_a_restarted_replica_loses_its_entries():
    index = PrefixIndex()
    index.apply_events("a", events(0, [(STORED, 1), (STORED, 2), (STORED, 3)]), next_seq=3)
    index.apply_events("b", events(0, [(STORED, 1)]), next_seq=1)
    index.reset_replica("a")
    assert index.match([1, 2]) == {"b": 1} and index.num_blocks("a") == 0
    index.apply_events("a", events(0, [(STORED, 5)]), next_seq=1)  # the new manager
    assert not index.needs_snapshot("a") and index.match([5]) == {"a": 1}
    # Numbering that goes back is a restart the index notices by itself.
    index.apply_events("b", events(0, [(STORED, 6)]), next_seq=1)
    index.apply_events("b", [], next_seq=0)
    assert index.num_blocks("b") == 0 and not index.needs_snapshot("b")


def test_a_removed_replica_is_forgotten_and_its_slot_reused_clean():
    index = PrefixIndex()
    index.apply_snapshot("a", [1, 2], next_seq=4)
    index.apply_snapshot("b", [1], next_seq=1)
    index.remove_replica("a")
    index.remove_replica("nobody")
    assert index.replicas == ["b"] and index.match([1, 2]) == {"b": 1}
    index.apply_snapshot("c", [2], next_seq=0)  # takes a's freed slot
    assert index.match([1, 2]) == {"b": 1} and index.match([2]) == {"c": 1}
    index.apply_snapshot("d", [1, 2], next_seq=0)
    assert index.match([1, 2]) == {"b": 1, "d": 2}


def test_events_a_snapshot_covered_are_skipped_and_later_ones_apply():
    index = PrefixIndex()
    index.apply_snapshot("a", [1, 2], next_seq=2)
    # 0 and 1 were in the snapshot; 2 and 3 are new (not the usual batch from 2 on).
    index.apply_events("a", events(0, [(STORED, 9), (EVICTED, 1), (EVICTED, 2), (STORED, 3)]), 4)
    assert not index.needs_snapshot("a") and index.next_seq("a") == 4
    assert index.match([1]) == index.match([3]) == {"a": 1} and index.match([2]) == {}
    index.apply_events("a", iter(events(5, [(STORED, 4)])), next_seq=6)  # any iterable
    assert index.needs_snapshot("a") and index.num_blocks("a") == 3


def test_an_unknown_event_kind_raises():
    with pytest.raises(ValueError, match="'stored' or 'evicted'"):
        PrefixIndex().apply_events("a", events(0, [("moved", 1)]), next_seq=1)
