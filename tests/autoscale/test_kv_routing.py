"""KvAwareRouting against real block managers standing in for replicas' caches: the
router's prediction of cached tokens is what the engine's allocator then reuses."""

from __future__ import annotations

import random

import pytest

from autoscale.kv_routing import KvAwareRouting, prompt_block_hashes
from autoscale.replica_update import ReplicaUpdate, StepSample
from autoscale.routing_policy import CACHE_HIT, FALLBACK, LEAST_WAIT
from autoscale.step_time import DECODE, PREFILL
from engine.block_events import BLOCK_EVICTED, BLOCK_STORED, BlockEvent
from engine.block_manager import BlockManager
from engine.prefix_hash import prefix_block_hashes
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

BLOCK = 16


class Fleet:
    """Replicas as real block managers, a router, and the wiring a replica would do."""

    def __init__(self, names=("a", "b", "c"), num_blocks=64):
        self.caches = {name: BlockManager(num_blocks, BLOCK) for name in names}
        self.router = KvAwareRouting(BLOCK, rng=random.Random(0))
        self.running: dict[str, tuple[str, Sequence]] = {}

    def warm_up(self) -> None:
        """Give every replica step-time data (the same speed)."""
        for name in self.caches:
            for n in (64, 256, 1024):
                self.router.step_time(name).observe(PREFILL, n, 0.005 + 1e-4 * n)

    def route(self, rid: str, tokens: list[int], replicas=None):
        decision = self.router.choose(rid, tokens, list(replicas or self.caches))
        routed = self.router.inflight.load(decision.replica).num_queued_tokens
        # The replica admits it: the engine's own prefix lookup must agree with the router.
        bm = self.caches[decision.replica]
        seq = Sequence(rid, tokens, SamplingParams(), seed=0)
        bm.allocate(seq)
        seq.num_computed_tokens = seq.num_tokens
        bm.publish_computed_blocks(seq)
        self.router.inflight.on_first_token(rid)
        self.running[rid] = (decision.replica, seq)
        self.publish(decision.replica)
        return decision, seq, routed

    def finish(self, rid: str) -> None:
        name, seq = self.running.pop(rid)
        self.caches[name].free(seq)
        assert self.router.on_finished(rid)

    def publish(self, name: str) -> None:
        batch = self.caches[name].drain_events()
        self.router.index.apply_events(name, batch.events, batch.next_seq)


def prompt(prefix_seed: int, prefix_len: int, suffix: list[int]) -> list[int]:
    rng = random.Random(prefix_seed)
    return [rng.randrange(32000) for _ in range(prefix_len)] + suffix


def test_a_shared_prefix_lands_where_it_is_cached_and_skips_its_prefill():
    fleet = Fleet()
    fleet.warm_up()
    first, seq, routed = fleet.route("r1", prompt(1, 320, [1, 2, 3]))
    assert first.reason == LEAST_WAIT and seq.num_cached_tokens == 0 and routed == 323
    fleet.finish("r1")
    again, seq, routed = fleet.route("r2", prompt(1, 320, [4, 5]))
    assert again.replica == first.replica and again.reason == CACHE_HIT
    assert seq.num_cached_tokens == 320 and routed == 2  # the router predicted the reuse
    # Another prefix, while r2 decodes on the holder: an idle replica is sooner.
    other, seq, _ = fleet.route("r3", prompt(2, 320, [6]))
    assert other.replica != first.replica and seq.num_cached_tokens == 0
    fleet.finish("r2")
    fleet.finish("r3")


def test_a_busy_cache_holder_spills_and_a_removed_replica_is_never_chosen():
    fleet = Fleet()
    fleet.warm_up()
    home, _, _ = fleet.route("r0", prompt(1, 320, [1]))
    fleet.finish("r0")
    for i in range(6):  # long prompts queued on the holder, not yet prefilled
        fleet.router.inflight.on_routed(home.replica, f"queued{i}", 2000)
    spilled, _, _ = fleet.route("r1", prompt(1, 320, [2]))
    assert spilled.replica != home.replica and spilled.reason == LEAST_WAIT
    fleet.finish("r1")
    fleet.router.remove_replica(home.replica)
    left = [name for name in fleet.caches if name != home.replica]
    for i in range(8):
        decision, _, _ = fleet.route(f"s{i}", prompt(1, 320, [i]), replicas=left)
        assert decision.replica in left
        fleet.finish(f"s{i}")


def test_routing_falls_back_until_every_candidate_has_step_data():
    fleet = Fleet(names=("a", "b"))
    decision, _, _ = fleet.route("r1", prompt(1, 64, [1]))
    assert decision.reason == FALLBACK and decision.predicted_ttft_s is None
    fleet.finish("r1")
    fleet.warm_up()
    decision, _, _ = fleet.route("r2", prompt(1, 64, [2]))
    assert decision.reason == CACHE_HIT and decision.predicted_ttft_s > 0
    fleet.finish("r2")


def test_counts_return_to_zero_and_bad_prompts_raise():
    fleet = Fleet()
    fleet.warm_up()
    for i in range(5):
        fleet.route(f"r{i}", prompt(i % 2, 100, [i]))
    for i in range(5):
        fleet.finish(f"r{i}")
    assert all(fleet.router.inflight.load(name).num_requests == 0 for name in fleet.caches)
    with pytest.raises(ValueError, match="at least one token"):
        fleet.router.choose("empty", [], ["a"])
    with pytest.raises(ValueError, match="block_size"):
        KvAwareRouting(0)


def test_a_prompt_in_flight_counts_as_cached_where_it_was_sent():
    """A prompt sharing a prefix with one in flight goes where that one was computed, even
    before the replica's stored events arrive; once it finishes, only events count. While
    the first is still queued for prefill, waiting behind it costs more than computing the
    prefix elsewhere (both would compute it in the same step anyway)."""
    router = KvAwareRouting(BLOCK, rng=random.Random(0))
    for name in ("a", "b"):
        for n in (64, 256, 1024):
            router.step_time(name).observe(PREFILL, n, 0.005 + 1e-4 * n)
    shared = prompt(7, 320, [1])
    first = router.rank(shared, ["a", "b"])
    router.on_routed("r1", first.decision.replica, first)
    queued = router.rank(prompt(7, 320, [2]), ["a", "b"])
    assert queued.decision.replica != first.decision.replica
    router.on_first_token("r1")
    second = router.rank(prompt(7, 320, [2]), ["a", "b"])
    assert second.decision.replica == first.decision.replica
    assert second.decision.reason == CACHE_HIT
    assert second.num_prefill_tokens[first.decision.replica] == 1
    assert router.on_finished("r1") and not router.on_finished("r1")
    third = router.rank(prompt(7, 320, [3]), ["a", "b"])
    assert third.decision.reason == LEAST_WAIT  # nothing confirmed it: no cache either way


def test_rank_orders_every_candidate_and_ranks_text_prompts_by_load():
    router = KvAwareRouting(BLOCK, rng=random.Random(0))
    names = ["a", "b", "c"]
    for name in names:
        router.step_time(name).observe(PREFILL, 100, 0.02)
    router.inflight.on_routed("a", "busy-a", 5000)
    router.inflight.on_routed("b", "busy-b", 500)
    ranking = router.rank(None, names, num_prompt_tokens=300)
    assert ranking.replicas == ["c", "b", "a"] and ranking.block_hashes == ()
    assert ranking.num_prefill_tokens == {"a": 300, "b": 300, "c": 300}


def test_hashes_the_caller_already_has_rank_the_same():
    fleet = Fleet()
    fleet.warm_up()
    fleet.route("r1", prompt(3, 320, [1, 2, 3]))
    tokens = prompt(3, 320, [9] * 40)
    hashes = prompt_block_hashes(tokens, BLOCK)
    assert len(hashes) == (len(tokens) - 1) // BLOCK
    given = fleet.router.rank(tokens, list(fleet.caches), block_hashes=hashes)
    assert given == fleet.router.rank(tokens, list(fleet.caches))
    with pytest.raises(ValueError, match="block_hashes"):
        fleet.router.rank(tokens, list(fleet.caches), block_hashes=hashes[:-1])


def test_updates_feed_the_index_and_the_step_model_and_old_snapshots_are_skipped():
    router = KvAwareRouting(BLOCK)
    tokens = prompt(3, 64, [9])
    hashes = list(prefix_block_hashes(tokens, BLOCK, num_blocks=4))
    steps = (StepSample(PREFILL, 65, 0.02, 0), StepSample(DECODE, 2, 0.01, 130))
    events = tuple(BlockEvent(i, BLOCK_STORED, h) for i, h in enumerate(hashes))
    router.apply_update(ReplicaUpdate("a", events, 4, None, steps))
    assert router.index.num_blocks("a") == 4 and router.step_time("a").has_data
    assert router.rank(tokens, ["a"]).num_prefill_tokens["a"] == 1
    # A snapshot taken before those events (number 2) is older than what is known: skipped.
    router.apply_update(ReplicaUpdate("a", (), 2, tuple(hashes[:2]), ()))
    assert router.index.num_blocks("a") == 4
    # An eviction numbered 5 after a missed event 4: stale until a snapshot arrives.
    router.apply_update(ReplicaUpdate("a", (BlockEvent(5, BLOCK_EVICTED, hashes[3]),), 6, None, ()))
    assert router.index.needs_snapshot("a") and router.index.num_blocks("a") == 3
    router.apply_update(ReplicaUpdate("a", (), 6, tuple(hashes[:1]), ()))
    assert not router.index.needs_snapshot("a") and router.index.num_blocks("a") == 1
    router.apply_update(ReplicaUpdate("a", (), 6, (), steps), with_steps=False)
    assert router.step_time("a").num_observations(PREFILL) == 1


def test_replicas_that_measured_a_few_percent_apart_share_the_load():
    """Equal replicas fit models a few percent apart; near-equal predictions are ties,
    broken by load, so a lightly loaded fleet is not all sent to the one that measured
    faster."""
    router = KvAwareRouting(BLOCK, rng=random.Random(0))
    for name, scale in (("a", 1.0), ("b", 1.05)):
        for n in (64, 256, 1024):
            router.step_time(name).observe(PREFILL, n, scale * (0.005 + 1e-4 * n))
    chosen = []
    for i in range(4):
        chosen.append(router.choose(f"r{i}", prompt(10 + i, 100, [i]), ["a", "b"]).replica)
        router.on_first_token(f"r{i}")  # decoding: one row each, no queue
    assert sorted(chosen) == ["a", "a", "b", "b"]


def test_least_wait_is_the_queue_ahead_on_the_least_loaded_replica():
    fleet = Fleet(names=("a", "b"))
    assert fleet.router.least_wait_s(["a", "b"]) is None  # no step data: nothing known
    fleet.warm_up()
    assert fleet.router.least_wait_s(["a", "b"]) == 0.0  # idle: no wait at all
    assert fleet.router.least_wait_s([]) is None
    fleet.router.inflight.on_routed("a", "q1", 2000)  # 2,000 tokens queued on a
    model = fleet.router.step_time("a")
    assert fleet.router.least_wait_s(["a"]) == pytest.approx(model.prefill_s(2000))
    assert fleet.router.least_wait_s(["a", "b"]) == 0.0  # b is idle
    fleet.router.inflight.on_routed("b", "q2", 1000)
    expected = fleet.router.step_time("b").prefill_s(1000)
    assert fleet.router.least_wait_s(["a", "b"]) == pytest.approx(expected)
    # the wait is the prompt-independent part of the predicted TTFT
    decision = fleet.router.rank(prompt(3, 64, [1]), ["b"]).decision
    own = fleet.router.step_time("b").prefill_s(65)
    assert decision.predicted_ttft_s == pytest.approx(expected + own)
    assert fleet.router.on_finished("q1") and fleet.router.on_finished("q2")
