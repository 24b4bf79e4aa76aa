"""Demand from counters: arrival rates, the fleet's demand, the trend and the peak."""

from __future__ import annotations

import doctest

import pytest

from autoscale import slo_demand
from autoscale.slo_demand import advance_counters, fleet_demand, peak, trend_per_s


def test_docstring_example():
    result = doctest.testmod(slo_demand)
    assert result.attempted >= 1 and result.failed == 0


def snapshot(previous=None, at=0.0, prompt=0, generated=0, queued=0):
    return advance_counters(previous, at, prompt, generated, queued, window_s=10.0)


def test_a_repeated_snapshot_keeps_its_rates_and_a_restart_is_a_baseline():
    first = snapshot()
    later = snapshot(first, 10.0, 10_000, 1_000)
    assert snapshot(later, 10.0, 10_000, 1_000) is later  # the same stamp: no new rates
    restarted = snapshot(later, 20.0, 50, 5)  # counters went back
    assert not restarted.has_rates and restarted.prompt_served_s == 0.0
    assert snapshot(restarted, 30.0, 10_050, 1_005).prompt_served_s == pytest.approx(1000.0)


def test_a_draining_queue_is_not_negative_demand():
    first = snapshot(queued=50_000)
    draining = snapshot(first, 10.0, 20_000, 0, queued=0)  # 20k served, queue -50k
    assert draining.prompt_arrival_s == 0.0


def test_saturated_fleet_demand_scales_output_by_prompt_arrivals():
    a = snapshot(snapshot(), 10.0, 10_000, 2_000, queued=10_000)  # 1k/s served, 2k/s arrive
    demand = fleet_demand([a], None)
    assert demand.prompt_tokens_s == pytest.approx(2000.0)
    assert demand.output_tokens_s == pytest.approx(400.0)  # 0.2 output per prompt token
    assert demand.output_per_prompt_token == pytest.approx(0.2)


def test_replicas_without_rates_count_as_the_mean_of_the_others():
    known = snapshot(snapshot(), 10.0, 10_000, 2_000)
    new = snapshot(at=10.0)
    demand = fleet_demand([known, new], None)
    assert demand.prompt_tokens_s == pytest.approx(2000.0)
    assert fleet_demand([new], 0.2).prompt_tokens_s == 0.0


def test_nothing_served_keeps_the_last_ratio():
    stuck = snapshot(snapshot(), 10.0, 0, 0, queued=5_000)
    demand = fleet_demand([stuck], 0.5)
    assert demand.prompt_tokens_s == pytest.approx(500.0)
    assert demand.output_tokens_s == pytest.approx(250.0)


def test_the_trend_needs_both_halves_rising_and_ignores_one_odd_sample():
    ramp = [(float(t), 1.0 + 0.01 * t) for t in range(0, 61, 5)]
    assert trend_per_s(ramp, 60.0, 60.0) == pytest.approx(0.01)
    dip = [(t, 0.0 if t == 30.0 else v) for t, v in ramp]
    assert trend_per_s(dip, 60.0, 60.0) == pytest.approx(0.01)
    falling = [(t, 2.0 - 0.01 * t) for t, _ in ramp]
    assert trend_per_s(falling, 60.0, 60.0) == 0.0
    assert trend_per_s(ramp[-2:], 60.0, 60.0) == 0.0  # too short


def test_the_peak_is_over_the_window_only():
    samples = [(0.0, 9.0), (50.0, 2.0), (100.0, 1.0)]
    assert peak(samples, 100.0, 60.0) == 2.0
    assert peak([], 100.0, 60.0) == 0.0


def test_rates_average_over_the_window_from_the_newest_snapshot_before_it():
    counters, prompt = None, 0
    for at in range(0, 61):  # 1,000 prompt tokens every fourth second, reported every second
        prompt += 1_000 if at % 4 == 0 else 0
        counters = advance_counters(counters, float(at), prompt, 0, 0, window_s=20.0)
    assert counters.history[0][0] == 40.0  # the snapshot the window starts from
    assert [snap[0] for snap in counters.history] == [float(t) for t in range(40, 60)]
    assert counters.prompt_served_s == pytest.approx(5 * 1_000 / 20.0)  # 44, 48, ..., 60
    sparse = advance_counters(advance_counters(None, 0.0, 0, 0, 0), 90.0, 9_000, 0, 0, 20.0)
    assert sparse.prompt_served_s == pytest.approx(100.0)  # reports further apart: the last
    young = advance_counters(advance_counters(None, 0.0, 0, 0, 0), 9.0, 9_000, 0, 0, 20.0)
    assert not young.has_rates  # under half the window of history: no rates yet


def test_a_half_window_barely_begun_gives_no_trend():
    # four samples rising over the first 3 s of a 120 s window: not a ramp to extrapolate
    early = [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)] + [(t, 3.0) for t in range(4, 64)]
    assert trend_per_s(early, now=63.0, window_s=120.0) == 0.0
