"""The simulated replica makes the real engine's scheduling decisions, step by step."""

from __future__ import annotations

import random

import pytest

from autoscale.sim.replica import SimReplica, SimRequest, kv_cache_blocks
from autoscale.sim.step_cost import PREFILL, StepWork
from engine import SamplingParams
from engine.config import EngineConfig

OUTPUT_TOKENS = 20


class ConstantCost:
    """Every prefill step 50 ms, every decode step 20 ms."""

    def step_s(self, work: StepWork) -> float:
        return 0.05 if work.kind == PREFILL else 0.02


def shared_prefix_prompts() -> list[list[int]]:
    """Six prompts: two groups sharing a 24-token prefix, tails of 10..40 tokens."""
    rng = random.Random(7)
    prefixes = [[rng.randrange(3, 512) for _ in range(24)] for _ in range(2)]
    tails = [10, 40, 25, 33, 12, 38]
    return [
        prefixes[i % 2] + [rng.randrange(3, 512) for _ in range(n)] for i, n in enumerate(tails)
    ]


ENGINE_ARGS = dict(
    skip_tokenizer_init=True,
    block_size=8,
    kv_cache_tokens=160,  # 20 blocks for 6 requests of up to ~85 tokens: preemption
    max_model_len=128,
    max_num_seqs=4,
    max_num_batched_tokens=32,  # prompts over 32 tokens are chunked
)


def record_schedules(scheduler, log: list) -> None:
    """Append (kind, [(request_id, num_tokens)]) of every step scheduler forms."""
    schedule = scheduler.schedule

    def recorded(*args, **kwargs):
        out = schedule(*args, **kwargs)
        if out is not None:
            log.append((out.kind.value, [(s.seq.request_id, s.num_tokens) for s in out.scheduled]))
        return out

    scheduler.schedule = recorded


def run_real(make_llm, model_dir, prompts):
    llm = make_llm(model_dir, **ENGINE_ARGS)
    engine = llm.engine
    decisions, records = [], []
    record_schedules(engine.scheduler, decisions)
    engine.step_observer = records.append
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, ignore_eos=True, temperature=0.0)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"req-{i}", prompt, params)
    finished_at: dict[str, int] = {}
    while engine.has_unfinished:
        for out in engine.step(stream=False):
            finished_at[out.request_id] = len(decisions)
            assert len(out.token_ids) == OUTPUT_TOKENS
    stats = engine.stats()
    return engine, decisions, records, finished_at, stats


def run_sim(config: EngineConfig, num_blocks: int, prompts, collapse: bool):
    replica = SimReplica("r", config, num_blocks, ConstantCost(), publish=True, collapse=collapse)
    decisions: list = []
    record_schedules(replica.scheduler, decisions)
    requests = [SimRequest(i, f"req-{i}", 0.0, p, OUTPUT_TOKENS) for i, p in enumerate(prompts)]
    for request in requests:
        replica.add(request, 0.0)
    finished_at: dict[str, int] = {}
    num_steps = 0

    def on_outcome(outcome):
        nonlocal num_steps
        num_steps += 1
        for request in outcome.finished:
            finished_at[request.request_id] = num_steps

    replica.wake(0.0)
    replica.advance_to(float("inf"), on_outcome)
    records = [record for _, record in replica._unpublished]
    return replica, decisions, records, finished_at, requests


def test_sim_replica_schedules_exactly_as_the_real_engine(tiny_model_dir, make_llm):
    prompts = shared_prefix_prompts()
    engine, real, real_records, real_finished, stats = run_real(
        make_llm, tiny_model_dir("llama"), prompts
    )
    assert stats.num_preemptions > 0, "the test must force a preemption"
    assert stats.num_prefix_hit_tokens > 0, "the test must hit the prefix cache"
    chunks = [n for kind, items in real if kind == "prefill" for _, n in items]
    assert any(n == ENGINE_ARGS["max_num_batched_tokens"] for n in chunks), "and chunk prompts"
    num_blocks = engine.block_manager.num_blocks
    assert kv_cache_blocks(engine.config, ENGINE_ARGS["kv_cache_tokens"]) == num_blocks

    replica, sim, sim_records, sim_finished, requests = run_sim(
        engine.config, num_blocks, prompts, False
    )
    assert sim == real
    assert sim_finished == real_finished  # each request ends at the same step
    assert replica.scheduler.num_preemptions == stats.num_preemptions
    assert replica.block_manager.num_prefix_hits_tokens == stats.num_prefix_hit_tokens
    assert replica.num_prefill_tokens == stats.num_prefill_tokens
    assert replica.num_generated_tokens == stats.num_generated_tokens
    assert all(r.num_generated == OUTPUT_TOKENS and r.finish_s is not None for r in requests)

    def shape(records):  # what the router's feed takes from each step
        return [
            (r.kind, r.num_tokens, r.num_rows, r.num_context_tokens, len(r.block_events.events))
            for r in records
        ]

    assert shape(sim_records) == shape(real_records)
    # Collapsed: the same steps, records and completions, with schedule() called less.
    replica, collapsed, collapsed_records, _, collapsed_requests = run_sim(
        engine.config, num_blocks, prompts, True
    )
    assert len(collapsed) < len(real)
    assert shape(collapsed_records) == shape(real_records)
    assert [r.seconds for r in collapsed_records] == [r.seconds for r in sim_records]
    assert [(r.first_token_s, r.finish_s) for r in collapsed_requests] == [
        (r.first_token_s, r.finish_s) for r in requests
    ]
    bm = replica.block_manager
    assert bm.num_free_blocks == bm.num_usable_blocks and not replica.requests


def test_kv_cache_blocks_counts_the_padding_block_and_refuses_too_small():
    config = EngineConfig(block_size=16, max_model_len=256)
    assert kv_cache_blocks(config, 1000) == 62 + 1
    with pytest.raises(ValueError, match="max_model_len"):
        kv_cache_blocks(config, 200)


def test_metrics_report_what_the_replica_did():
    config = EngineConfig(block_size=16, max_model_len=256, max_num_seqs=4)
    replica = SimReplica("r", config, 64, ConstantCost(), startup_s=30.0)
    for i in range(3):
        replica.add(SimRequest(i, f"q{i}", 0.0, list(range(40 + i, 140 + i)), 5), 0.0)
    replica.wake(0.0)
    replica.advance_to(10.0, lambda outcome: None)
    metrics = replica.metrics(10.0)
    assert metrics.generated_tokens_total == 15
    assert metrics.prompt_tokens_total == 300
    assert metrics.num_running == metrics.num_waiting == 0
    assert metrics.startup_s == 30.0
    assert metrics.ttft_p95_s is not None and metrics.tpot_p95_s == pytest.approx(0.02)
    assert metrics.step_time is not None


def run_replica(config: EngineConfig, requests: list[SimRequest], collapse: bool):
    replica = SimReplica("r", config, 64, ConstantCost(), publish=True, collapse=collapse)
    decisions: list = []
    record_schedules(replica.scheduler, decisions)
    for request in requests:
        replica.add(request, 0.0)
    replica.wake(0.0)
    replica.advance_to(float("inf"), lambda outcome: None)
    records = [
        (end, r._replace(block_events=r.block_events.events)) for end, r in replica._unpublished
    ]
    return replica, decisions, records


def test_rows_finish_inside_a_decode_run_as_step_by_step():
    # Nothing waits (4 rows, max_num_seqs 4): rows finish inside decode runs, at and off
    # block boundaries (8-token blocks), one at max_model_len (96), the last run alone.
    config = EngineConfig(block_size=8, max_model_len=96, max_num_seqs=4)
    prompts = [list(range(3, 3 + n)) for n in (21, 16, 30, 60)]
    outputs = [3, 8, 11, 50]  # 21 + 3 = 24 and 16 + 8 = 24 end on a boundary; 60 + 36 = 96
    runs = []
    for collapse in (False, True):
        requests = [
            SimRequest(i, f"q{i}", 0.0, p, n)
            for i, (p, n) in enumerate(zip(prompts, outputs, strict=True))
        ]
        replica, decisions, records = run_replica(config, requests, collapse)
        times = [(r.first_token_s, r.finish_s, r.num_generated) for r in requests]
        runs.append((replica, decisions, records, times))
    (plain, plain_decisions, plain_records, plain_times) = runs[0]
    (collapsed, collapsed_decisions, collapsed_records, collapsed_times) = runs[1]
    assert collapsed_records == plain_records  # every step: size, time, block events
    assert collapsed_times == plain_times
    assert [n for _, _, n in plain_times] == [3, 8, 11, 36]
    assert len(collapsed_decisions) < len(plain_decisions) // 4
    assert collapsed.num_generated_tokens == plain.num_generated_tokens == 58
    for replica in (plain, collapsed):
        bm = replica.block_manager
        assert bm.num_free_blocks == bm.num_usable_blocks and not replica.requests
