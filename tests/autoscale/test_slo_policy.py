"""The SLO autoscaling policy over scripted traces in virtual time, and signal by signal."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest

from autoscale import slo_policy
from autoscale.slo_policy import (
    CAPACITY,
    COVERED_BY_STARTING,
    KV_CACHE,
    MAX_REPLICAS,
    MIN_REPLICAS,
    QUEUE_WAIT,
    REPLACE_STUCK,
    SCALE_DOWN,
    SCALE_DOWN_PENDING,
    SCALE_FROM_ZERO,
    STEADY,
    TPOT,
    TTFT,
    FleetMetrics,
    PolicyState,
    ReplicaMetrics,
    decide,
)
from tests.autoscale.slo_trace import (
    FIT,
    STARTUP_S,
    Trace,
    changes,
    config,
    direction_changes,
)


def test_docstring_example():
    result = doctest.testmod(slo_policy)
    assert result.attempted >= 1 and result.failed == 0


# -- traces ------------------------------------------------------------------------------


def test_steady_load_scales_once_and_never_oscillates():
    trace = Trace(lambda t: 1.5, num_replicas=2)
    steps = trace.run_until(3600)
    assert changes(steps) == [(10.0, 3, CAPACITY)]  # ceil(1.5 / 0.7); the first tick a baseline
    assert {s.reason for s in steps if s.t > 10 + STARTUP_S} == {STEADY}


def test_ramp_scales_up_monotonically_ahead_of_the_load():
    def ramp(t):
        return 0.5 + 3.5 * min(t, 1200) / 1200

    with_forecast = Trace(ramp).run_until(1800)
    without = Trace(ramp, config=config(forecast_window_s=10.0)).run_until(1800)  # no trend
    ups = changes(with_forecast)
    assert [n for _, n, _ in ups] == [2, 3, 4, 5, 6]  # ceil(4 / 0.7), one replica at a time
    assert {reason for _, _, reason in ups} == {CAPACITY}
    assert direction_changes(with_forecast) == 0
    # looking one start-up ahead adds each replica earlier, so the fleet runs cooler
    for (t_forecast, n, _), (t_late, m, _) in zip(ups, changes(without), strict=True):
        assert n == m and t_forecast < t_late
    hottest = max(s.utilization for s in with_forecast[20:])
    assert hottest < max(s.utilization for s in without[20:])
    assert hottest < 1.0  # never overloaded once the first start-up is over


def test_burst_scales_up_at_once_then_down_one_at_a_time_after_the_window():
    cfg = config()
    trace = Trace(lambda t: 4.0 if 600 <= t < 720 else 0.9, num_replicas=2, config=cfg)
    steps = trace.run_until(2400)
    moves = changes(steps)
    assert moves[0] == (600.0, 6, CAPACITY)  # ceil(4 / 0.7) in one decision
    downs = moves[1:]
    assert [n for _, n, _ in downs] == [5, 4, 3, 2]  # to ceil(0.9 / 0.7), one at a time
    assert {reason for _, _, reason in downs} == {SCALE_DOWN}
    # nothing goes before the burst's peak has left the worst-case window and the delay ran
    assert downs[0][0] >= 720 + cfg.demand_window_s
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(downs)]
    assert min(gaps) >= cfg.downscale_delay_s
    assert direction_changes(steps) == 1


def test_slow_decay_steps_down_one_replica_at_a_time():
    cfg = config()
    trace = Trace(lambda t: max(0.5, 4.0 - 3.5 * t / 2400), num_replicas=6, config=cfg)
    steps = trace.run_until(3600)
    moves = changes(steps)
    assert [n for _, n, _ in moves] == [5, 4, 3, 2, 1]
    assert {reason for _, _, reason in moves} == {SCALE_DOWN}
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(moves)]
    assert min(gaps) >= cfg.downscale_delay_s
    assert max(s.utilization for s in steps) < cfg.target_utilization  # never too few


def test_periodic_load_settles_and_never_oscillates():
    period_s = 240.0  # shorter than the 300 s worst-case window
    trace = Trace(lambda t: 1.5 + math.sin(2 * math.pi * t / period_s))
    steps = trace.run_until(3600)
    assert direction_changes(steps) == 0
    settled = [s for s in steps if s.t >= 2 * period_s]
    assert len({s.num_replicas for s in settled}) == 1
    assert max(s.utilization for s in settled) < 1.0  # the crests are served


def test_a_replica_that_dies_is_replaced_without_a_second_replica():
    trace = Trace(lambda t: 1.5, num_replicas=3)
    trace.run_until(600)
    trace.kill("r2")
    steps = trace.run_until(1800)
    assert changes(steps) == []  # the platform refills the slot; the target stays 3
    starting = [s for s in steps if s.decision.figures.num_starting]
    assert {s.reason for s in starting} == {COVERED_BY_STARTING}
    assert starting[-1].t - starting[0].t < STARTUP_S + trace.tick_s
    assert steps[-1].num_serving == 3


def test_a_replica_stuck_starting_stops_counting_and_is_replaced_once():
    cfg = config()
    trace = Trace(lambda t: 1.0 if t < 300 else 2.5, num_replicas=2, config=cfg)
    trace.run_until(295)
    trace.stuck_starts = 1  # the first replica started after this never serves
    steps = trace.run_until(1800)
    assert [n for _, n, _ in changes(steps)] == [4, 5]
    t_up, t_replace = changes(steps)[0][0], changes(steps)[1][0]
    assert changes(steps)[1][2] == REPLACE_STUCK
    # stuck: starting for more than 3 x the start-up time (the slot opens a tick later)
    assert t_replace - t_up == pytest.approx(cfg.stuck_startup_factor * STARTUP_S + 10.0)
    last = steps[-1].decision.figures
    assert (last.num_serving, last.num_starting, last.num_stuck) == (4, 1, 1)


def test_scale_from_zero_and_back_to_zero():
    cfg = config(min_replicas=0)
    trace = Trace(lambda t: 1.2 if 300 <= t < 1200 else 0.0, num_replicas=0, config=cfg)
    idle = trace.run_until(295)
    assert {(s.num_replicas, s.reason) for s in idle} == {(0, STEADY)}
    steps = trace.run_until(3000)
    moves = changes(steps)
    assert moves[0] == (300.0, 1, SCALE_FROM_ZERO)  # requests held at the callers
    assert [n for _, n, _ in moves].index(max(n for _, n, _ in moves)) > 0
    assert moves[-1][1:] == (0, SCALE_DOWN)
    assert moves[-1][0] >= 1200 + cfg.demand_window_s
    assert direction_changes(steps) == 1


def test_max_replicas_caps_and_says_so():
    trace = Trace(lambda t: 5.0, num_replicas=1, config=config(max_replicas=3))
    steps = trace.run_until(600)
    assert max(s.num_replicas for s in steps) == 3
    assert steps[-1].reason == CAPACITY  # what asked for more, capped:
    assert steps[-1].decision.figures.limited_by == MAX_REPLICAS
    assert steps[-1].decision.figures.desired[CAPACITY] == 8  # ceil(5 / 0.7)


def test_min_replicas_floor_holds_without_load():
    trace = Trace(lambda t: 0.0, num_replicas=1, config=config(min_replicas=2))
    steps = trace.run_until(1200)
    assert steps[0].num_replicas == 2 and steps[0].decision.figures.limited_by == MIN_REPLICAS
    assert {s.num_replicas for s in steps} == {2}


def test_max_scale_up_step_limits_each_decision():
    trace = Trace(lambda t: 4.0, num_replicas=1, config=config(max_scale_up_step=2))
    steps = trace.run_until(600)
    assert max(s.num_replicas - s.before for s in steps) == 2
    assert steps[-1].num_replicas == 6  # ceil(4 / 0.7), two at a time


# -- signal by signal -------------------------------------------------------------------


def replica(name="a", at=0.0, prompt=0, generated=0, **metrics) -> ReplicaMetrics:
    metrics = {"step_time": FIT, "startup_s": STARTUP_S} | metrics
    return ReplicaMetrics(name, at, prompt, generated, **metrics)


def two_calls(second: dict, first: dict | None = None, target: int = 2, cfg=None, **fleet):
    """Two replicas each serving 2,000 prompt + 240 output tokens/s (0.5 busy, load 1.0, so
    2 replicas fit); `second` overrides replica a's metrics at the second call (t = 10)."""
    cfg = cfg or config()
    names = ["a", "b"][:target]
    state = PolicyState(num_serving=target)  # not a fresh start: no settling
    first_fleet = FleetMetrics(tuple(replica(n, **(first or {})) for n in names), target)
    state = decide(first_fleet, cfg, state, now=0.0).state
    replicas = [replica(n, 10.0, 20_000, 2_400) for n in names]
    replicas[0] = replica("a", 10.0, 20_000, 2_400, **second)
    return decide(FleetMetrics(tuple(replicas), target, **fleet), cfg, state, now=10.0)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({"ttft_p95_s": 1.5}, TTFT),
        ({"tpot_p95_s": 0.06}, TPOT),
        ({"kv_usage": 0.9}, KV_CACHE),
    ],
)
def test_each_breach_asks_for_one_more_than_serving(metrics, reason):
    decision = two_calls(metrics)
    assert (decision.num_replicas, decision.reason) == (3, reason)
    assert decision.figures.desired[reason] == 3
    assert decision.figures.desired[CAPACITY] == 2


def test_a_queue_the_fleet_cannot_drain_within_a_start_up_asks_for_one_more():
    # 1.5M queued tokens: 150 s of prefill at 10k tokens/s, while 2 replicas at load 1.0
    # have 1 replica of spare capacity: drained in 150 s, longer than the 60 s start-up
    decision = two_calls(
        {"num_queued_prompt_tokens": 1_500_000}, {"num_queued_prompt_tokens": 1_500_000}
    )
    assert (decision.num_replicas, decision.reason) == (3, QUEUE_WAIT)
    short = two_calls({"num_queued_prompt_tokens": 20_000}, {"num_queued_prompt_tokens": 20_000})
    assert short.reason == STEADY  # a 2 s wait, gone in 20 s: a new replica would find none


def test_requests_waiting_at_the_callers_ask_for_one_more():
    decision = two_calls({}, num_waiting_at_callers=3)
    assert (decision.num_replicas, decision.reason) == (3, QUEUE_WAIT)


def test_a_deficit_covered_by_a_starting_replica_is_not_covered_twice():
    # 2 serving, 1 starting (target 3); replica a breaches TTFT: serving + 1 = 3 is covered
    cfg = config()
    state = PolicyState(num_serving=2)
    fleet = FleetMetrics((replica("a"), replica("b")), target_num_replicas=3)
    state = decide(fleet, cfg, state, now=0.0).state
    replicas = (
        replica("a", 10.0, 20_000, 2_400, ttft_p95_s=3.0),
        replica("b", 10.0, 20_000, 2_400),
    )
    decision = decide(FleetMetrics(replicas, 3), cfg, state, now=10.0)
    assert (decision.num_replicas, decision.reason) == (3, COVERED_BY_STARTING)


def test_breaches_wait_while_new_replicas_settle():
    cfg = config(settle_s=60.0)
    state = PolicyState(num_serving=1)  # a replica just became serving: the count rose
    decision = decide(FleetMetrics((replica("a"), replica("b")), 2), cfg, state, now=0.0)
    slow = (replica("a", 30.0, 60_000, 7_200, ttft_p95_s=3.0), replica("b", 30.0, 60_000, 7_200))
    settling = decide(FleetMetrics(slow, 2), cfg, decision.state, now=30.0)
    assert settling.reason != TTFT and settling.num_replicas == 2
    slow = (
        replica("a", 70.0, 140_000, 16_800, ttft_p95_s=3.0),
        replica("b", 70.0, 140_000, 16_800),
    )
    settled = decide(FleetMetrics(slow, 2), cfg, settling.state, now=70.0)
    assert (settled.num_replicas, settled.reason) == (3, TTFT)


def test_a_breach_blocks_scaling_back_down_to_that_count_for_the_window():
    cfg = config(downscale_delay_s=0.0)

    def after(first_metrics):
        state = two_calls(first_metrics, cfg=cfg).state  # at 2 serving
        idle = (
            replica("a", 20.0, 20_000, 2_400),
            replica("b", 20.0, 20_000, 2_400),
            replica("c", 20.0),
        )
        return decide(FleetMetrics(idle, 3), cfg, state, now=20.0)  # no load now

    assert after({}).reason == SCALE_DOWN
    blocked = after({"ttft_p95_s": 1.5})  # 2 replicas missed the SLO 10 s ago
    assert (blocked.num_replicas, blocked.reason) == (3, STEADY)


def test_scale_down_waits_for_the_delay_with_every_signal_agreeing():
    cfg = config(downscale_delay_s=30.0, demand_window_s=20.0, forecast_window_s=10.0)
    state = PolicyState(num_serving=3)
    reasons = []
    for t in range(0, 80, 5):
        fleet = FleetMetrics(tuple(replica(n, float(t)) for n in "abc"), 3)
        decision = decide(fleet, cfg, state, now=float(t))
        state = decision.state
        reasons.append((t, decision.num_replicas, decision.reason))
        if decision.num_replicas < 3:
            break
    assert reasons[-1] == (30, 2, SCALE_DOWN)
    assert {r for _, _, r in reasons[:-1]} == {SCALE_DOWN_PENDING}


def test_kv_over_the_low_mark_blocks_scale_down():
    cfg = config(downscale_delay_s=0.0)
    state = PolicyState(num_serving=3)

    def idle(kv_usage):
        replicas = tuple(replica(n, kv_usage=kv_usage if n == "a" else 0.0) for n in "abc")
        return decide(FleetMetrics(replicas, 3), cfg, state, now=0.0)

    assert idle(0.4).reason == SCALE_DOWN
    assert (idle(0.6).num_replicas, idle(0.6).reason) == (3, STEADY)


def test_calling_more_often_than_replicas_report_changes_nothing():
    cfg = config()
    state = PolicyState(num_serving=2)
    fleet0 = FleetMetrics((replica("a"), replica("b")), 2)
    fleet1 = FleetMetrics((replica("a", 10.0, 20_000, 2_400), replica("b", 10.0, 20_000, 2_400)), 2)
    state = decide(fleet0, cfg, state, now=0.0).state
    first = decide(fleet1, cfg, state, now=10.0)
    again = decide(fleet1, cfg, first.state, now=10.5)  # the same snapshots, later
    assert again.figures.demand_tokens_s == first.figures.demand_tokens_s


def test_start_up_time_comes_from_the_replicas_then_memory_then_the_default():
    cfg = config(default_startup_s=200.0)
    fresh = decide(FleetMetrics((), 0), cfg, PolicyState(), now=0.0)
    assert fresh.figures.startup_s == 200.0
    measured = FleetMetrics((replica("a", startup_s=40.0), replica("b", startup_s=80.0)), 2)
    decision = decide(measured, cfg, fresh.state, now=1.0)
    assert decision.figures.startup_s == 60.0  # the median
    gone = decide(FleetMetrics((), 2), cfg, decision.state, now=2.0)
    assert gone.figures.startup_s == 60.0


def test_a_negative_target_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="target_num_replicas"):
        decide(FleetMetrics((), -1), config(), PolicyState(), now=0.0)


def test_bursty_arrivals_are_judged_by_their_mean_over_the_rate_window():
    """Arrivals in bursts (every other one-second tick carries twice the mean, the others
    nothing): rates between consecutive reports swing from 0 to 2x, and a policy that
    scales up on the swings holds the fleet at its maximum; over rate_window_s they read
    as the mean (1.5 replicas busy) and the count stays the steady one, ceil(1.5 / 0.7)."""

    def bursts(t):
        return 3.0 if round(t) % 2 == 0 else 0.0

    smoothed = Trace(bursts, config=config(rate_window_s=30.0), num_replicas=3, tick_s=1.0)
    assert changes(smoothed.run_until(1800)) == []
    raw = Trace(bursts, config=config(rate_window_s=1.0), num_replicas=3, tick_s=1.0)
    assert max(s.num_replicas for s in raw.run_until(1800)) > 3
