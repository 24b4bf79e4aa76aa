"""Step records: one per engine step with its kind and sizes, block events that replay to
the block manager's cached hashes, a snapshot after an overflow or on request, nothing
drained without an observer, warm-up steps observed too, and names that load no torch."""

from __future__ import annotations

import shutil
import subprocess
import sys

from engine import (
    AsyncEngine,
    BlockEvent,
    EngineConfig,
    SamplingParams,
    SpeculativeConfig,
    StepRecord,
)
from engine.block_events import BLOCK_EVICTED, BLOCK_STORED, BlockEventLog
from tests.conftest import assert_engine_idle, random_prompts

BLOCK_SIZE = 8


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def observed_llm(make_llm, tiny_model_dir, **kwargs):
    kwargs.setdefault("block_size", BLOCK_SIZE)
    llm = make_llm(tiny_model_dir("llama"), skip_tokenizer_init=True, **kwargs)
    records: list[StepRecord] = []
    llm.engine.step_observer = records.append
    return llm, records


def replay(events: list[BlockEvent], hashes: set[int] | None = None) -> set[int]:
    hashes = set() if hashes is None else set(hashes)
    for event in events:
        if event.kind == BLOCK_STORED:
            hashes.add(event.block_hash)
        else:
            assert event.kind == BLOCK_EVICTED
            hashes.discard(event.block_hash)
    return hashes


def test_a_record_per_step_with_its_kind_and_sizes(tiny_model_dir, make_llm):
    llm, records = observed_llm(make_llm, tiny_model_dir)
    prompts = random_prompts([20, 13], seed=11)
    llm.generate(prompts, greedy(4))
    assert len(records) == llm.engine.stats().num_steps
    prefill, *decodes = records
    assert (prefill.kind, prefill.num_rows, prefill.num_tokens) == ("prefill", 2, 33)
    assert prefill.num_context_tokens == 0 and prefill.seconds > 0
    assert [r.kind for r in decodes] == ["decode"] * 3  # the prefill gave each its first token
    for i, record in enumerate(decodes):
        assert record.num_rows == record.num_tokens == 2
        # each row attends to its prompt and the tokens generated before the one it feeds
        assert record.num_context_tokens == 33 + 2 * i
        assert record.seconds > 0 and record.snapshot is None


def test_a_cached_prefix_counts_as_context(tiny_model_dir, make_llm):
    llm, records = observed_llm(make_llm, tiny_model_dir)
    shared = random_prompts([32], seed=12)[0]
    llm.generate([[*shared, 1, 2]], greedy(2))
    records.clear()
    llm.generate([[*shared, 3, 4, 5]], greedy(2))
    assert (records[0].kind, records[0].num_tokens, records[0].num_context_tokens) == (
        "prefill",
        3,
        32,
    )


def test_events_replay_to_the_cached_block_hashes(tiny_model_dir, make_llm):
    # 12 blocks for 4 requests of ~40 tokens: blocks are handed out again (evictions)
    llm, records = observed_llm(make_llm, tiny_model_dir, kv_cache_tokens=96, max_model_len=64)
    llm.generate(random_prompts([30, 25, 33, 28], seed=13), greedy(8))
    events = [e for r in records for e in r.block_events.events]
    assert [e.seq for e in events] == list(range(len(events)))
    assert records[-1].block_events.next_seq == len(events)
    assert {BLOCK_STORED, BLOCK_EVICTED} <= {e.kind for e in events}
    assert not any(r.block_events.overflowed or r.snapshot is not None for r in records)
    assert replay(events) == llm.engine.block_manager.cached_block_hashes()


def test_an_overflow_gives_a_snapshot_taken_right_after_the_drain(tiny_model_dir, make_llm):
    llm, records = observed_llm(make_llm, tiny_model_dir)
    bm = llm.engine.block_manager
    bm.events = BlockEventLog(max_pending=2)  # a 40-token prompt stores 5 blocks at once
    prompt = random_prompts([40], seed=14)[0]
    llm.generate([prompt], greedy(20))
    first = records[0].block_events
    assert first.overflowed and first.events == [] and first.next_seq == 5
    assert records[0].snapshot is not None and len(records[0].snapshot) == 5
    hashes = records[0].snapshot
    for record in records[1:]:  # later steps store a block at a time: no overflow
        assert not record.block_events.overflowed and record.snapshot is None
        hashes = replay(record.block_events.events, hashes)
    assert hashes == bm.cached_block_hashes() and len(hashes) == (40 + 19) // BLOCK_SIZE


def test_a_requested_snapshot_comes_with_the_next_step_only(tiny_model_dir, make_llm):
    llm, records = observed_llm(make_llm, tiny_model_dir)
    llm.generate(random_prompts([17], seed=15), greedy(3))
    llm.engine.request_block_snapshot()
    llm.generate(random_prompts([9], seed=16), greedy(3))
    first_new = records[3]  # the second request's prefill
    assert not first_new.block_events.overflowed
    assert first_new.snapshot == replay([e for r in records[:4] for e in r.block_events.events])
    assert all(r.snapshot is None for r in records[:3] + records[4:])


def test_without_an_observer_events_stay_in_the_log(tiny_model_dir, make_llm):
    llm = make_llm(tiny_model_dir("llama"), skip_tokenizer_init=True, block_size=BLOCK_SIZE)
    llm.generate(random_prompts([24], seed=17), greedy(2))
    batch = llm.engine.block_manager.drain_events()
    assert len(batch.events) == 3 and not batch.overflowed


def test_verify_steps_are_decode_steps_with_rows(tiny_model_dir, make_llm, tmp_path):
    target = tiny_model_dir("llama")
    draft = shutil.copytree(target, tmp_path / "draft")  # every greedy proposal accepted
    spec = SpeculativeConfig(draft_model=str(draft), num_speculative_tokens=3, adaptive=False)
    llm, records = observed_llm(make_llm, tiny_model_dir, speculative=spec)
    llm.generate(random_prompts([12, 19], seed=18), greedy(12))
    decodes = [r for r in records if r.kind == "decode"]
    assert {r.kind for r in records} == {"prefill", "decode"}
    assert any(r.num_tokens > r.num_rows for r in decodes)  # rows fed their proposals too
    assert all(r.num_rows <= 2 and r.num_tokens <= 4 * r.num_rows for r in decodes)


def test_async_engine_passes_the_observer_and_warm_up_steps_are_observed(tiny_model_dir):
    records: list[StepRecord] = []
    config = EngineConfig(
        model=str(tiny_model_dir("llama")),
        device="cpu",
        dtype="float32",
        kv_cache_tokens=1024,
        block_size=BLOCK_SIZE,
        warmup=False,
    )
    engine = AsyncEngine(config, step_observer=records.append)
    try:
        engine.warm_up([1] * 10, greedy(2))
        assert [(r.kind, r.num_tokens) for r in records] == [("prefill", 10), ("decode", 1)]
        assert [e.kind for e in records[0].block_events.events] == [BLOCK_STORED]
    finally:
        assert_engine_idle(engine.engine)
        engine.shutdown()


def test_step_record_names_load_no_torch():
    code = (
        "import sys\n"
        "from engine import BlockEvent, BlockEventBatch, StepKind, StepObserver, StepRecord\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
