"""ReplicaFeed: per-session updates (snapshot first, then only what changed), cursors that
fall out of the log, engine-log overflows and lost records resynced from snapshots, the
least recently used session dropped, and a real engine mirrored exactly while it steps."""

from __future__ import annotations

import asyncio
import doctest
import random

import pytest

from autoscale import replica_feed
from autoscale.replica_feed import ReplicaFeed
from autoscale.replica_update import ReplicaUpdate, StepSample
from autoscale.step_time import DECODE, PREFILL
from engine import (
    BLOCK_EVICTED,
    BLOCK_STORED,
    AsyncEngine,
    BlockEvent,
    BlockEventBatch,
    EngineConfig,
    SamplingParams,
    StepRecord,
)
from tests.conftest import assert_engine_idle, random_prompts


class FakeStepper:
    """Numbers block events as a block manager does and wraps them in step records."""

    def __init__(self) -> None:
        self.next_seq = 0

    def record(
        self,
        stored=(),
        evicted=(),
        kind="decode",
        num_tokens=1,
        num_rows=1,
        overflowed=False,
        snapshot=None,
    ) -> StepRecord:
        events = []
        for event_kind, hashes in ((BLOCK_STORED, stored), (BLOCK_EVICTED, evicted)):
            for h in hashes:
                events.append(BlockEvent(self.next_seq, event_kind, h))
                self.next_seq += 1
        batch = BlockEventBatch([] if overflowed else events, self.next_seq, overflowed)
        return StepRecord(kind, num_tokens, num_rows, 7, 0.01, batch, snapshot)


class Router:
    """What a receiver keeps of one replica: its hashes, following updates exactly."""

    def __init__(self) -> None:
        self.hashes: set[int] = set()
        self.next_seq = 0
        self.steps: list[StepSample] = []
        self.num_evicted = 0

    def apply(self, update: ReplicaUpdate | None) -> None:
        if update is None:
            return
        self.steps.extend(update.steps)
        if update.snapshot is not None:
            assert update.events == ()
            self.hashes, self.next_seq = set(update.snapshot), update.next_seq
            return
        for event in update.events:
            assert event.seq == self.next_seq, "a gap in a session's events"
            self.next_seq += 1
            if event.kind == BLOCK_STORED:
                self.hashes.add(event.block_hash)
            else:
                self.hashes.discard(event.block_hash)
                self.num_evicted += 1
        assert self.next_seq == update.next_seq


def test_docstring_example():
    result = doctest.testmod(replica_feed)
    assert result.attempted >= 1 and result.failed == 0


def test_a_new_session_gets_a_snapshot_then_only_what_changed():
    feed, stepper = ReplicaFeed("r1"), FakeStepper()
    assert feed.update_for("s1") == ReplicaUpdate("r1", (), 0, (), ())  # nothing yet
    assert feed.update_for("s1") is None
    feed.on_step(stepper.record(stored=[1, 2], kind="prefill", num_tokens=16))
    feed.on_step(stepper.record(stored=[3]))
    update = feed.update_for("s1")
    assert [e.seq for e in update.events] == [0, 1, 2] and update.snapshot is None
    assert update.next_seq == 3 and len(update.steps) == 2
    late = feed.update_for("s2")  # another session: its own cursor, a snapshot first
    assert sorted(late.snapshot) == [1, 2, 3] and late.next_seq == 3 and len(late.steps) == 2
    feed.on_step(stepper.record(evicted=[1]))
    for session in ("s1", "s2"):
        update = feed.update_for(session)
        assert update.events == (BlockEvent(3, BLOCK_EVICTED, 1),) and len(update.steps) == 1
    assert feed.update_for("s1") is None and feed.update_for("s2") is None


def test_steps_map_to_the_step_time_models_kinds_and_sizes():
    feed, stepper = ReplicaFeed("r1"), FakeStepper()
    feed.on_step(stepper.record(kind="prefill", num_tokens=120, num_rows=3))
    feed.on_step(stepper.record(kind="decode", num_tokens=12, num_rows=3))  # a verify step
    assert feed.update_for("s").steps == (
        StepSample(PREFILL, 120, 0.01, 7),
        StepSample(DECODE, 3, 0.01, 7),
    )
    feed.on_step(stepper.record(kind="verify"))
    with pytest.raises(ValueError, match="step kind must be one of"):
        feed.update_for("s")


def test_a_cursor_that_fell_out_of_the_log_gets_a_snapshot():
    feed, stepper = ReplicaFeed("r1", max_events=4, max_steps=3), FakeStepper()
    feed.update_for("slow")
    feed.update_for("fast")
    router = Router()
    for h in range(10):
        feed.on_step(stepper.record(stored=[h]))
        router.apply(feed.update_for("fast"))  # keeps up: events only
        assert router.hashes == set(range(h + 1))
    update = feed.update_for("slow")  # 10 events behind, 4 kept
    assert sorted(update.snapshot) == list(range(10)) and update.next_seq == 10
    assert len(update.steps) == 3  # the latest max_steps


@pytest.mark.parametrize("max_events", [3, 8, 64])
def test_the_mirror_folded_in_bulk_equals_one_applied_event_by_event(max_events):
    """The feed folds events into its mirror when they would leave its log or a snapshot
    is taken: stores, evictions and a hash stored again after its eviction, in one batch
    or across batches, end as applying them one by one does."""
    rng = random.Random(max_events)
    feed, stepper = ReplicaFeed("r1", max_events=max_events), FakeStepper()
    fast, lagging, held = Router(), Router(), set()
    for step in range(200):
        stored = [rng.randrange(12) for _ in range(rng.randrange(4))]
        evicted = [rng.randrange(12) for _ in range(rng.randrange(4))]
        record = stepper.record(stored=stored, evicted=evicted)
        for _, kind, h in record.block_events.events:
            (held.add if kind == BLOCK_STORED else held.discard)(h)
        feed.on_step(record)
        fast.apply(feed.update_for("fast"))  # one step behind at most: a few events
        assert fast.hashes == held
        if step % 7 == 0:  # further behind: the log's tail, or a snapshot
            lagging.apply(feed.update_for("lagging"))
            assert lagging.hashes == held
        if step % 11 == 0:
            assert set(feed.snapshot().snapshot) == held


def test_an_engine_log_overflow_resyncs_every_session_from_its_snapshot():
    feed, stepper, router = ReplicaFeed("r1"), FakeStepper(), Router()
    feed.on_step(stepper.record(stored=[1, 2]))
    router.apply(feed.update_for("s"))
    feed.on_step(stepper.record(stored=[3, 4, 5], evicted=[1], overflowed=True, snapshot={2, 3}))
    update = feed.update_for("s")
    assert sorted(update.snapshot) == [2, 3] and update.next_seq == 6
    router.apply(update)
    feed.on_step(stepper.record(stored=[6]))
    router.apply(feed.update_for("s"))
    assert router.hashes == {2, 3, 6} and router.next_seq == 7
    assert sorted(feed.snapshot().snapshot) == [2, 3, 6]


def test_lost_records_stop_the_mirror_at_the_gap_until_a_snapshot_comes():
    requests = []
    feed = ReplicaFeed("r1", max_pending_records=2, request_snapshot=lambda: requests.append(1))
    stepper, router = FakeStepper(), Router()
    router.apply(feed.update_for("s"))
    for h in range(4):  # nobody consumes: the inbox keeps the latest 2 records
        feed.on_step(stepper.record(stored=[h]))
    update = feed.update_for("s")
    assert update.events == () and update.next_seq == 0 and len(update.steps) == 2
    assert requests and feed.snapshot().snapshot == ()  # exact, as of seq 0
    feed.on_step(stepper.record(stored=[4], snapshot={0, 1, 2, 3, 4}))  # the requested one
    num_requests = len(requests)
    router.apply(feed.update_for("s"))
    assert router.hashes == {0, 1, 2, 3, 4} and router.next_seq == 5
    assert len(requests) == num_requests  # no more asked for


def test_the_least_recently_used_session_is_dropped():
    feed, stepper = ReplicaFeed("r1", max_sessions=2), FakeStepper()
    feed.update_for("a")
    feed.update_for("b")
    feed.on_step(stepper.record(stored=[1]))
    assert feed.update_for("a").events  # a is now the most recently used
    feed.update_for("c")  # drops b
    assert feed.num_sessions == 2
    assert feed.update_for("a") is None
    assert feed.update_for("b").snapshot == (1,)  # b starts over, dropping c


def test_snapshot_moves_no_cursor_and_keeps_recent_steps():
    feed, stepper = ReplicaFeed("r1", max_steps=2), FakeStepper()
    feed.update_for("s")
    for h in range(3):
        feed.on_step(stepper.record(stored=[h]))
    snapshot = feed.snapshot()
    assert sorted(snapshot.snapshot) == [0, 1, 2] and snapshot.next_seq == 3
    assert len(snapshot.steps) == 2 and snapshot.events == ()
    assert len(feed.update_for("s").events) == 3


@pytest.mark.parametrize("name", ["max_events", "max_steps", "max_sessions", "max_pending_records"])
def test_limits_must_be_positive(name):
    with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got 0"):
        ReplicaFeed("r1", **{name: 0})


def test_a_real_engine_is_mirrored_exactly_while_it_steps(tiny_model_dir):
    """Two sessions follow a serving engine (evictions included) from the event loop while
    it steps on its own thread; both end with the block manager's hashes."""
    feed = ReplicaFeed("r1")
    config = EngineConfig(
        model=str(tiny_model_dir("llama")),
        device="cpu",
        dtype="float32",
        block_size=8,
        kv_cache_tokens=128,
        max_model_len=64,
        warmup=False,
    )
    engine = AsyncEngine(config, step_observer=feed.on_step)
    feed.request_snapshot = engine.engine.request_block_snapshot
    routers = {"s1": Router(), "s2": Router()}
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

    async def follow(rid: str, prompt: list[int]) -> None:
        async for _ in engine.generate(prompt, params, rid):
            routers["s1"].apply(feed.update_for("s1"))

    async def main() -> None:
        prompts = random_prompts([30, 25, 33, 28, 20, 31], seed=21)
        await asyncio.gather(*(follow(f"r{i}", p) for i, p in enumerate(prompts)))

    try:
        asyncio.run(main())
        for session, router in routers.items():
            router.apply(feed.update_for(session))
        hashes = engine.engine.block_manager.cached_block_hashes()
        assert routers["s1"].hashes == routers["s2"].hashes == hashes
        assert routers["s1"].num_evicted > 0  # blocks were handed out again
        assert sum(s.kind == PREFILL for s in routers["s1"].steps) >= 1
        assert len(routers["s1"].steps) == engine.stats().num_steps
    finally:
        assert_engine_idle(engine.engine)
        engine.shutdown()
