"""The fleet's event loop on cases checked by hand, with a constant step cost."""

from __future__ import annotations

import pytest

from autoscale.kv_routing import prompt_block_hashes
from autoscale.sim.fleet import Fleet, FleetConfig
from autoscale.sim.policies import RoundRobinSimRouter
from autoscale.sim.simulate import sim_engine_config, simulate
from autoscale.sim.step_cost import PREFILL, StepWork
from autoscale.sim.trace import TraceRequest
from deployments.config import ModelConfig


class ConstantCost:
    """Every prefill step 50 ms, every decode step 20 ms."""

    def step_s(self, work: StepWork) -> float:
        return 0.05 if work.kind == PREFILL else 0.02


def model_config(serve: dict | None = None, **engine) -> ModelConfig:
    engine = {"max_model_len": 1024, "kv_cache_tokens": 16384, "block_size": 16, **engine}
    return ModelConfig.model_validate(
        {"name": "m", "engine": engine, "serve": serve or {"num_replicas": 1}}
    )


def test_one_replica_two_requests_exact_times():
    trace = [TraceRequest(0.0, 40, 3), TraceRequest(0.01, 40, 2)]
    result = simulate(model_config(), trace, ConstantCost())
    first, second = result.records
    # [0, .05] prefill of the first; [.05, .10] the second's (prefill first);
    # [.10, .12] decode: the second's 2nd token (done), [.12, .14] the first's 3rd.
    assert (first.first_token_s, first.finish_s) == pytest.approx((0.05, 0.14))
    assert (second.first_token_s, second.finish_s) == pytest.approx((0.10, 0.12))
    assert first.output_tokens == 3 and second.output_tokens == 2
    assert result.duration_s == pytest.approx(0.14)
    assert result.stats["num_steps"] == 4


def test_kv_aware_sends_a_shared_prefix_where_it_is_cached():
    serve = {"num_replicas": 3, "request_router": "kv_aware"}
    trace = [TraceRequest(0.0, 64, 4), TraceRequest(0.0, 64, 4), TraceRequest(0.0, 64, 4)]
    trace += [TraceRequest(5.0, 300, 4, "system", 256)]
    trace += [TraceRequest(10.0 + i, 300, 4, "system", 256) for i in range(4)]
    result = simulate(model_config(serve), trace, ConstantCost())
    holder = result.records[3].replica
    assert {r.replica for r in result.records[:3]} == {"replica-000", "replica-001", "replica-002"}
    for record in result.records[4:]:
        assert record.replica == holder
        assert record.num_cached_tokens == 256


def burst(n: int, start: float, gap_s: float) -> list[TraceRequest]:
    return [TraceRequest(start + i * gap_s, 200, 200) for i in range(n)]


def test_ongoing_requests_scales_up_after_startup_and_drains_down_losing_nothing():
    autoscaling = {
        "policy": "ongoing_requests",
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 4,
        "upscale_delay_s": 0,
        "downscale_delay_s": 5,
    }
    trace = burst(200, 0.0, 0.1) + burst(4, 100.0, 1.0)
    result = simulate(
        model_config({"autoscaling": autoscaling}), trace, ConstantCost(), startup_s=10.0
    )
    ups = [e for e in result.scale_events if e.to_replicas > e.from_replicas]
    downs = [e for e in result.scale_events if e.to_replicas < e.from_replicas]
    assert ups and downs and max(e.to_replicas for e in ups) > 1
    first_up = ups[0].time_s
    late = [r for r in result.records if r.replica not in (None, "replica-000")]
    assert late, "the new replicas served requests"
    assert min(r.first_token_s for r in late) >= first_up + 10.0
    assert not any(r.rejected for r in result.records)
    assert all(r.finish_s is not None and r.output_tokens == 200 for r in result.records)
    assert result.samples[-1].target_replicas < max(e.to_replicas for e in ups)


def test_slo_policy_scales_up_under_load_and_every_request_completes():
    autoscaling = {"min_replicas": 1, "max_replicas": 3, "default_startup_s": 5}
    serve = {"autoscaling": autoscaling, "slo": {"ttft_s": 0.5, "tpot_s": 0.05}}
    trace = burst(300, 0.0, 0.02)
    result = simulate(model_config(serve, max_num_seqs=8), trace, ConstantCost())
    assert any(e.to_replicas > e.from_replicas for e in result.scale_events)
    assert all(r.finish_s is not None for r in result.records)


def test_requests_wait_at_the_caller_when_every_replica_is_full():
    serve = {"num_replicas": 1, "max_ongoing_requests": 2, "max_queued_requests": 3}
    trace = [TraceRequest(0.0, 40, 10) for _ in range(6)]
    result = simulate(model_config(serve), trace, ConstantCost())
    assert [r.rejected for r in result.records] == [False] * 5 + [True]
    accepted = [r for r in result.records if not r.rejected]
    assert all(r.finish_s is not None for r in accepted)
    assert result.stats["num_held_at_caller"] == 3


def mixed_trace() -> list[TraceRequest]:
    trace = []
    for i in range(120):
        prefix = ("a", 128) if i % 3 == 0 else ("b", 64) if i % 3 == 1 else (None, 0)
        prompt = 150 + (i * 37) % 300
        trace.append(TraceRequest(i * 0.15, prompt, 20 + (i * 13) % 90, *prefix))
    return trace


@pytest.mark.parametrize("router", ["kv_aware", "power_of_two", "prefix_affinity", "round_robin"])
def test_collapsing_plain_decode_steps_changes_nothing(router):
    autoscaling = {"min_replicas": 2, "max_replicas": 4, "default_startup_s": 3}
    serve = {"autoscaling": autoscaling, "slo": {"ttft_s": 0.3, "tpot_s": 0.05}}
    model = model_config(serve, max_num_seqs=8, kv_cache_tokens=1024, block_size=16)
    runs = [
        simulate(model, mixed_trace(), ConstantCost(), router=router, collapse=collapse)
        for collapse in (False, True)
    ]
    step_by_step, collapsed = runs
    assert collapsed.records == step_by_step.records
    assert collapsed.samples == step_by_step.samples
    assert collapsed.scale_events == step_by_step.scale_events
    assert collapsed.stats == step_by_step.stats
    assert step_by_step.stats["num_preemptions"] > 0  # the small KV cache preempts
    assert step_by_step.stats["num_prefix_hit_tokens"] > 0


def test_a_run_is_determined_by_its_seed():
    model = model_config({"num_replicas": 3, "request_router": "power_of_two"})
    runs = [simulate(model, mixed_trace(), ConstantCost(), seed=s) for s in (1, 1, 2)]
    assert runs[0].records == runs[1].records
    assert [r.replica for r in runs[0].records] != [r.replica for r in runs[2].records]


@pytest.mark.parametrize("policy", ["slo", "ongoing_requests"])
def test_scale_from_zero_holds_requests_until_a_replica_is_up(policy):
    autoscaling = {"policy": policy, "min_replicas": 0, "max_replicas": 2}
    trace = [TraceRequest(0.5 + i * 0.1, 60, 5) for i in range(5)]
    result = simulate(
        model_config({"autoscaling": autoscaling}), trace, ConstantCost(), startup_s=8.0
    )
    first_up = result.scale_events[0]
    assert (first_up.from_replicas, first_up.to_replicas) == (0, 1)
    assert first_up.time_s == 1.0  # the first autoscaling tick after the first arrival
    assert all(r.finish_s is not None for r in result.records)
    assert min(r.first_token_s for r in result.records) >= 1.0 + 8.0
    assert result.stats["num_held_at_caller"] == 5


def admission_model(max_queue_wait_s: float, autoscaling: dict | None = None) -> ModelConfig:
    serve = {"request_router": "kv_aware", "max_queue_wait_s": max_queue_wait_s}
    serve.update({"autoscaling": autoscaling} if autoscaling else {"num_replicas": 1})
    return model_config(serve, max_num_seqs=1)


@pytest.mark.parametrize(
    ("max_queue_wait_s", "autoscaling", "refused"),
    [
        (1.0, None, True),  # 1 of at most 1 replica, predicted wait 2.02 s > 1 s
        (3.0, None, False),  # 2.02 s <= 3 s
        (1.0, {"policy": "ongoing_requests", "min_replicas": 1, "max_replicas": 2}, False),
    ],
)
def test_admission_control_refuses_when_every_replica_waits_too_long(
    max_queue_wait_s, autoscaling, refused
):
    # A (100 tokens) holds the only row (max_num_seqs 1); at 0.5 s the router's step times
    # (decode 20 ms a step) predict B waits one step plus A's 100 tokens: 0.02 + 2.0 s.
    trace = [TraceRequest(0.0, 40, 100), TraceRequest(0.5, 40, 5)]
    result = simulate(admission_model(max_queue_wait_s, autoscaling), trace, ConstantCost())
    first, second = result.records
    assert first.finish_s == pytest.approx(0.05 + 99 * 0.02)
    assert second.rejected is refused
    assert (second.finish_s is None) is refused
    assert result.stats["num_refused_by_admission"] == int(refused)


def test_a_request_held_without_a_replica_is_refused_after_the_cold_start_timeout():
    autoscaling = {
        "policy": "ongoing_requests",
        "min_replicas": 0,
        "max_replicas": 1,
        "upscale_delay_s": 0,
    }
    serve = {"autoscaling": autoscaling, "cold_start_timeout_s": 5.0}
    # Scaled up at the 1 s tick, the replica serves at 9 s: the first request's deadline
    # (5.5 s) passes before, the second's (11 s) after.
    trace = [TraceRequest(0.5, 40, 5), TraceRequest(6.0, 40, 5)]
    result = simulate(model_config(serve), trace, ConstantCost(), startup_s=8.0)
    first, second = result.records
    assert first.rejected and first.first_token_s is None
    assert not second.rejected and second.first_token_s == pytest.approx(9.0 + 0.05)
    assert result.stats["num_cold_start_timeouts"] == 1


@pytest.mark.parametrize("collapse", [False, True])
def test_a_drained_replica_stops_at_the_drain_timeout_and_its_requests_are_lost(collapse):
    autoscaling = {
        "policy": "ongoing_requests",
        "min_replicas": 1,
        "max_replicas": 2,
        "initial_replicas": 2,
        "target_ongoing_requests": 4,
        "downscale_delay_s": 0,
    }
    serve = {"autoscaling": autoscaling, "request_router": "round_robin", "drain_timeout_s": 2.0}
    # One long request each; the 1 s tick wants 1 replica and drains replica-000 (a tie
    # on ongoing requests and start: by name), which is stopped at 3 s: its request had
    # its prefill (0.05 s) and 147 decode steps (0.05 + 147 * 0.02 = 2.99 s) by then.
    trace = [TraceRequest(0.0, 40, 900), TraceRequest(0.0, 40, 900)]
    result = simulate(model_config(serve), trace, ConstantCost(), collapse=collapse)
    lost, kept = result.records
    assert (lost.replica, kept.replica) == ("replica-000", "replica-001")
    assert not lost.rejected and lost.finish_s is None
    assert lost.first_token_s == pytest.approx(0.05) and lost.output_tokens == 148
    assert kept.finish_s == pytest.approx(0.05 + 899 * 0.02) and kept.output_tokens == 900
    assert result.stats["num_lost_in_drain"] == 1
    assert [(e.time_s, e.to_replicas) for e in result.scale_events] == [(1.0, 1)]


def test_a_request_held_at_the_caller_waits_for_the_step_that_started_as_a_slot_freed():
    serve = {"num_replicas": 1, "max_ongoing_requests": 2}
    trace = [TraceRequest(0.0, 40, 3), TraceRequest(0.0, 40, 10), TraceRequest(0.01, 40, 2)]
    result = simulate(model_config(serve), trace, ConstantCost())
    a, c, b = result.records
    # Prefills of a [0, .05] and c [.05, .10]; decodes end at .12 and .14 (a done: a
    # slot frees for b); the replica's next step [.14, .16] decodes c alone, then b's
    # prefill [.16, .21]; c's last 6 tokens come with the decodes after it (to .33).
    assert a.finish_s == pytest.approx(0.14)
    assert b.first_token_s == pytest.approx(0.21)
    assert c.finish_s == pytest.approx(0.33)
    assert result.stats["num_held_at_caller"] == 1


@pytest.mark.parametrize("router", ["kv_aware", "round_robin"])
def test_collapsing_changes_nothing_with_requests_held_at_the_caller(router):
    model = model_config(
        {"num_replicas": 2, "max_ongoing_requests": 5}, max_num_seqs=8, kv_cache_tokens=1024
    )
    runs = [
        simulate(model, mixed_trace(), ConstantCost(), router=router, collapse=collapse)
        for collapse in (False, True)
    ]
    step_by_step, collapsed = runs
    assert collapsed.records == step_by_step.records
    assert collapsed.stats == step_by_step.stats
    assert step_by_step.stats["num_held_at_caller"] > 0


def test_prompt_hashes_hashed_once_per_prefix_group_are_the_engines():
    """The fleet hashes each prefix group's leading blocks once and the rest per prompt;
    the result is the router's and the engine's hash of the whole prompt."""
    config = model_config()
    fleet = Fleet(
        FleetConfig(sim_engine_config(config), 1025, 32000), ConstantCost(), RoundRobinSimRouter()
    )
    items = [TraceRequest(0.0, n, 1, "sys", 40) for n in (40, 41, 48, 49, 300)]
    items += [TraceRequest(0.0, 33, 1), TraceRequest(0.0, 300, 1, "other", 256)]
    for index, item in enumerate(items):
        ids = fleet._prompt_ids(index, item)
        assert fleet._prompt_hashes(item, ids) == prompt_block_hashes(ids, 16), item
