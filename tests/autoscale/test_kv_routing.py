"""KvAwareRouting against real block managers standing in for replicas' caches: the
router's prediction of cached tokens is what the engine's allocator then reuses."""

from __future__ import annotations

import random

import pytest

from autoscale.kv_routing import KvAwareRouting
from autoscale.routing_policy import CACHE_HIT, FALLBACK, LEAST_WAIT
from autoscale.step_time import PREFILL
from engine.block_manager import BlockManager
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
        assert self.router.inflight.on_finished(rid)

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
