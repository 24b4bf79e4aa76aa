"""The SLO autoscaling policy: replicas from token demand vs capacity at the SLO, one cold
start ahead, as a pure function of (fleet metrics, config, policy state, now).

`decide` has no clock and no I/O: the caller passes `now` and the state the previous
decision returned (`PolicyState()` at first). Each call:

1. Counts replicas. Serving: the replicas that report metrics (at most the target).
   Starting: the rest of the target, each from when the policy first saw its slot empty
   (a replica that died leaves a slot the platform refills, so it counts as starting).
   When slots fill, the oldest are taken as started (so a stuck replica is found late,
   never early). A starting replica older than stuck_startup_factor x the start-up time is
   stuck: not capacity. The start-up time is the median of the replicas' own `startup_s`,
   the last one known, or default_startup_s.
2. Measures demand in load: replicas fully busy at the SLO. Each replica's step times give
   its capacity at the SLO (autoscale/slo_capacity.py); demand is the fleet's prompt
   arrivals and the output they ask for, from counters (autoscale/slo_demand.py);
   load = prompt/prefill capacity + output/decode capacity of the fleet's mean replica.
   Rates are averaged over rate_window_s of each replica's counters.
3. Scales up on the worst signal, each a desired count of replicas:
   - capacity: ceil(forecast / target_utilization), forecast = load now + its trend over
     forecast_window_s x the start-up time (never below now);
   - breaches, each asking for serving + 1: ttft, tpot: observed p95 over the SLO;
     kv_cache: KV usage over kv_high, each on at least half the serving replicas (one
     slow or backlogged replica is the router's to avoid, not a lack of capacity);
     queue_wait: requests waiting at the callers, or a replica's queued prompt tokens /
     its prefill capacity over ttft_s while the fleet's spare capacity cannot drain the
     whole queue within a start-up time (a replica added later would find it gone). For
     settle_s after the serving count rises, breaches are ignored: p95 windows, KV and
     queues still describe the time before the new replicas;
   - scale_from_zero: no replica serving and requests waiting at the callers: 1.
   Only a count over serving + starting (stuck ones excepted) adds replicas: a deficit a
   starting replica covers is not covered twice (reason covered_by_starting). Stuck
   replicas keep their slots (the platform picks which replica to remove), so the new
   count adds them back (reason replace_stuck when they alone make the difference).
4. Scales down by one only when every signal agrees continuously for downscale_delay_s:
   no SLO, KV or queue breach, every KV usage under kv_low, every queue wait under
   scale_down_utilization x ttft_s, no request waiting at the callers, N-1 replicas (not
   stuck) hold the worst case of demand_window_s: its peak load at scale_down_utilization
   and its peak forecast at target_utilization (N-1 = 0 only for no load and no request
   in flight), and no breach within demand_window_s at N-1 serving replicas or fewer.
   The delay restarts after each removal. The gap between the two utilizations, the peaks
   over a window and the breach memory keep steady or periodic load from oscillating.
5. Clamps to [min_replicas, max_replicas] and adds at most max_scale_up_step at once. The
   reason stays the signal's; `Figures.limited_by` names the bound that changed the count
   (min_replicas, max_replicas), so a capped scale-up still says what asked for it.

Worked example (two replicas, each step-time fit 0.1 ms per prompt token and 10 ms + 1 ms
per decode row: 10k prompt or 800 output tokens/s at a 50 ms TPOT; each prefills 2,000
prompt tokens/s and generates 480 tokens/s, 0.8 busy, over the 0.7 target):

    >>> config = SloPolicyConfig(ttft_s=1.0, tpot_s=0.05, max_replicas=4, rate_window_s=10.0)
    >>> fit = StepTimePrior(0.0, 1e-4, 0.01, 0.001)
    >>> def replica(name, at):
    ...     return ReplicaMetrics(name, at, prompt_tokens_total=int(2000 * at),
    ...                           generated_tokens_total=int(480 * at), step_time=fit)
    >>> def fleet(at):
    ...     return FleetMetrics((replica("a", at), replica("b", at)), target_num_replicas=2)
    >>> first = decide(fleet(0.0), config, PolicyState(), now=0.0)  # a baseline: no rates
    >>> first.num_replicas, first.reason
    (2, 'scale_down_pending')
    >>> second = decide(fleet(10.0), config, first.state, now=10.0)
    >>> second.num_replicas, second.reason
    (3, 'capacity')
    >>> f = second.figures
    >>> round(f.demand_tokens_s), round(f.capacity_tokens_s), f.utilization, f.desired["capacity"]
    (4960, 6200, 0.8, 3)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from autoscale.slo_capacity import ReplicaCapacity, capacity_at_slo, mean_capacity
from autoscale.slo_config import SloPolicyConfig
from autoscale.slo_demand import (
    ReplicaCounters,
    advance_counters,
    fleet_demand,
    peak,
    trend_per_s,
)
from autoscale.step_time import StepTimePrior

CAPACITY = "capacity"
TTFT = "ttft"
TPOT = "tpot"
KV_CACHE = "kv_cache"
QUEUE_WAIT = "queue_wait"
SCALE_FROM_ZERO = "scale_from_zero"
UP_SIGNALS = (CAPACITY, TTFT, TPOT, KV_CACHE, QUEUE_WAIT, SCALE_FROM_ZERO)  # ties: first
BREACH_SIGNALS = (TTFT, TPOT, KV_CACHE, QUEUE_WAIT)
WORST_CASE = "worst_case"  # in Figures.desired: replicas the window's peak needs to go down
REPLACE_STUCK = "replace_stuck"
SCALE_DOWN = "scale_down"
SCALE_DOWN_PENDING = "scale_down_pending"
COVERED_BY_STARTING = "covered_by_starting"
STEADY = "steady"
MIN_REPLICAS = "min_replicas"
MAX_REPLICAS = "max_replicas"
REASONS = (
    *UP_SIGNALS,
    REPLACE_STUCK,
    SCALE_DOWN,
    SCALE_DOWN_PENDING,
    COVERED_BY_STARTING,
    STEADY,
)
LIMITS = (MIN_REPLICAS, MAX_REPLICAS)  # Figures.limited_by

CEIL_TOLERANCE = 1e-9  # a load of 2.0000000001 replicas needs 2


@dataclass(frozen=True)
class ReplicaMetrics:
    """What one serving replica reports (counters since it started, on its own clock)."""

    replica_id: Hashable
    at: float  # when the replica took this snapshot, on its own clock (rates need only it)
    prompt_tokens_total: int  # prompt tokens taken off its queue (prefilled or cache hits)
    generated_tokens_total: int  # output tokens generated
    num_queued_prompt_tokens: int = 0  # accepted prompt tokens not yet prefilled
    num_waiting: int = 0  # requests accepted, not yet scheduled
    num_running: int = 0  # requests scheduled, not finished
    kv_usage: float = 0.0  # fraction of KV blocks in use, 0..1
    ttft_p95_s: float | None = None  # observed over its recent window; None: no request
    tpot_p95_s: float | None = None
    step_time: StepTimePrior | None = None  # its fitted step times (summarize_step_time)
    startup_s: float | None = None  # its measured load + warm-up; None: not known


@dataclass(frozen=True)
class FleetMetrics:
    """The deployment as the platform sees it."""

    replicas: tuple[ReplicaMetrics, ...]  # serving replicas that report, in any order
    target_num_replicas: int  # the count the platform is bringing up or keeping
    num_waiting_at_callers: int = 0  # requests held before any replica (e.g. from zero)


class DemandSample(NamedTuple):
    t: float  # the policy's now
    prompt_tokens_s: float
    output_tokens_s: float
    forecast_load: float  # replicas fully busy, one start-up time ahead


@dataclass(frozen=True)
class PolicyState:
    """What `decide` remembers between calls; `PolicyState()` to start. Never mutated."""

    counters: Mapping[Hashable, ReplicaCounters] = field(default_factory=dict)
    samples: tuple[DemandSample, ...] = ()  # within the longer of the two windows
    starting_since: tuple[float, ...] = ()  # one per starting slot, oldest first
    startup_s: float | None = None  # the last start-up time replicas reported
    capacity: ReplicaCapacity | None = None  # the last mean replica capacity
    output_per_prompt_token: float | None = None
    down_since: float | None = None  # every signal has agreed on a removal since
    num_serving: int | None = None  # at the last call
    serving_rose_at: float | None = None  # the serving count last rose
    breach_at: float | None = None  # the last SLO, KV or queue breach
    breach_num_serving: int = 0  # serving replicas at that breach


class Figures(NamedTuple):
    """The numbers behind a decision, for metrics and logs (tokens: prompt + output)."""

    demand_tokens_s: float  # asked now
    forecast_tokens_s: float  # one start-up time ahead, never below now
    peak_tokens_s: float  # the peak over demand_window_s
    capacity_tokens_s: float  # serving + starting (not stuck) replicas at the SLO
    utilization: float  # load now / replicas counted (inf: load and no replica)
    startup_s: float
    num_serving: int
    num_starting: int  # stuck ones included
    num_stuck: int
    desired: Mapping[str, int]  # per signal of UP_SIGNALS and WORST_CASE
    limited_by: str | None = None  # one of LIMITS when it changed the count, else None


class Decision(NamedTuple):
    num_replicas: int  # the target: serving + starting replicas wanted
    reason: str  # one of REASONS
    state: PolicyState  # pass to the next call
    figures: Figures


def decide(
    fleet: FleetMetrics, config: SloPolicyConfig, state: PolicyState, now: float
) -> Decision:
    """The replica count for the fleet now (module doc)."""
    target = fleet.target_num_replicas
    if target < 0:
        raise ValueError(f"target_num_replicas must be at least 0, got {target}")
    startup_s = _startup_s(fleet, state, config)
    num_serving = min(len(fleet.replicas), target)
    starting_since = _track_starting(state.starting_since, target - num_serving, now)
    stuck_after_s = config.stuck_startup_factor * startup_s
    num_stuck = sum(now - since > stuck_after_s for since in starting_since)
    num_counted = target - num_stuck

    counters = {
        r.replica_id: advance_counters(
            state.counters.get(r.replica_id),
            r.at,
            r.prompt_tokens_total,
            r.generated_tokens_total,
            r.num_queued_prompt_tokens,
            config.rate_window_s,
        )
        for r in fleet.replicas
    }
    capacities = _capacities(fleet, config)
    mean = mean_capacity(list(capacities.values())) if capacities else None
    mean = mean or state.capacity or _capacity(config.step_time_prior, config)
    demand = fleet_demand(list(counters.values()), state.output_per_prompt_token)
    horizon_s = max(config.demand_window_s, config.forecast_window_s)
    samples = tuple(s for s in state.samples if s.t >= now - horizon_s)
    load = mean.utilization(demand.prompt_tokens_s, demand.output_tokens_s)
    loads = [(s.t, mean.utilization(s.prompt_tokens_s, s.output_tokens_s)) for s in samples]
    loads.append((now, load))
    forecast = load + trend_per_s(loads, now, config.forecast_window_s) * startup_s
    samples += (DemandSample(now, demand.prompt_tokens_s, demand.output_tokens_s, forecast),)
    worst = peak(loads, now, config.demand_window_s)
    forecasts = [(s.t, s.forecast_load) for s in samples]
    worst_forecast = peak(forecasts, now, config.demand_window_s)

    serving_rose_at = state.serving_rose_at
    if state.num_serving is not None and num_serving > state.num_serving:
        serving_rose_at = now
    settling = serving_rose_at is not None and now - serving_rose_at < config.settle_s
    spare = num_counted - load  # replicas of capacity the load leaves free
    breaches = _breaches(fleet, capacities, mean, spare, startup_s, config)
    if settling:
        breaches = dict.fromkeys(breaches, False)
    desired = {CAPACITY: _ceil(forecast / config.target_utilization)}
    desired |= {signal: num_serving + 1 if breaches[signal] else 0 for signal in BREACH_SIGNALS}
    desired[SCALE_FROM_ZERO] = int(num_serving == 0 and fleet.num_waiting_at_callers > 0)
    need = max(desired.values())
    desired[WORST_CASE] = max(
        _ceil(worst / config.scale_down_utilization),
        _ceil(worst_forecast / config.target_utilization),
    )

    breach_at, breach_num_serving = state.breach_at, state.breach_num_serving
    if any(breaches.values()):
        breach_at, breach_num_serving = now, num_serving
    down_since = None
    if need > num_counted:
        num_replicas = need + num_stuck
        if config.max_scale_up_step is not None:
            num_replicas = min(num_replicas, target + config.max_scale_up_step)
        worst_signal = next(s for s in UP_SIGNALS if desired[s] == need)
        reason = REPLACE_STUCK if need <= target else worst_signal
    elif (
        target > config.min_replicas
        and _all_agree_down(
            fleet, breaches, capacities, mean, desired[WORST_CASE], num_counted, config
        )
        and not (
            breach_at is not None
            and now - breach_at < config.demand_window_s
            and num_counted - 1 <= breach_num_serving
        )
    ):
        down_since = state.down_since if state.down_since is not None else now
        num_replicas, reason = target, SCALE_DOWN_PENDING
        if now - down_since >= config.downscale_delay_s:
            num_replicas, reason, down_since = target - 1, SCALE_DOWN, now
    else:
        num_replicas = target
        reason = COVERED_BY_STARTING if need > num_serving else STEADY

    clamped = min(max(num_replicas, config.min_replicas), config.max_replicas)
    limited_by = None
    if clamped != num_replicas:
        limited_by = MIN_REPLICAS if clamped > num_replicas else MAX_REPLICAS

    per_replica_tokens_s = mean.tokens_s(demand.prompt_tokens_s, demand.output_tokens_s)
    figures = Figures(
        demand_tokens_s=demand.prompt_tokens_s + demand.output_tokens_s,
        forecast_tokens_s=forecast * per_replica_tokens_s,
        peak_tokens_s=worst * per_replica_tokens_s,
        capacity_tokens_s=num_counted * per_replica_tokens_s,
        utilization=load / num_counted if num_counted else (math.inf if load else 0.0),
        startup_s=startup_s,
        num_serving=num_serving,
        num_starting=target - num_serving,
        num_stuck=num_stuck,
        desired=desired,
        limited_by=limited_by,
    )
    new_state = PolicyState(
        counters=counters,
        samples=samples,
        starting_since=starting_since,
        startup_s=startup_s,
        capacity=mean,
        output_per_prompt_token=demand.output_per_prompt_token,
        down_since=down_since,
        num_serving=num_serving,
        serving_rose_at=serving_rose_at,
        breach_at=breach_at,
        breach_num_serving=breach_num_serving,
    )
    return Decision(clamped, reason, new_state, figures)


def _ceil(replicas: float) -> int:
    return max(0, math.ceil(replicas - CEIL_TOLERANCE))


def _startup_s(fleet: FleetMetrics, state: PolicyState, config: SloPolicyConfig) -> float:
    reported = [r.startup_s for r in fleet.replicas if r.startup_s is not None]
    if reported:
        return statistics.median(reported)
    return state.startup_s if state.startup_s is not None else config.default_startup_s


def _track_starting(since: tuple[float, ...], num_starting: int, now: float) -> tuple[float, ...]:
    """One start time per starting slot: the oldest taken as started when slots fill, new
    slots from now."""
    kept = since[len(since) - num_starting :] if num_starting < len(since) else since
    return kept + (now,) * (num_starting - len(kept))


def _capacity(step_time: StepTimePrior, config: SloPolicyConfig) -> ReplicaCapacity:
    return capacity_at_slo(
        step_time, config.ttft_s, config.tpot_s, config.max_num_seqs, config.prefill_chunk_tokens
    )


def _capacities(fleet: FleetMetrics, config: SloPolicyConfig) -> dict[Hashable, ReplicaCapacity]:
    return {
        r.replica_id: _capacity(r.step_time, config)
        for r in fleet.replicas
        if r.step_time is not None
    }


def _queue_wait_s(
    replica: ReplicaMetrics, capacities: Mapping[Hashable, ReplicaCapacity], mean: ReplicaCapacity
) -> float:
    capacity = capacities.get(replica.replica_id, mean)
    return replica.num_queued_prompt_tokens / capacity.prefill_tokens_s


def _breaches(
    fleet: FleetMetrics,
    capacities: Mapping[Hashable, ReplicaCapacity],
    mean: ReplicaCapacity,
    spare: float,
    startup_s: float,
    config: SloPolicyConfig,
) -> dict[str, bool]:
    replicas = fleet.replicas
    waits_s = [_queue_wait_s(r, capacities, mean) for r in replicas]
    backlog_s = sum(waits_s)  # replica-seconds of prefill queued
    lasting = spare <= 0 or backlog_s / spare > startup_s
    return {
        TTFT: _half(replicas, lambda r: r.ttft_p95_s is not None and r.ttft_p95_s > config.ttft_s),
        TPOT: _half(replicas, lambda r: r.tpot_p95_s is not None and r.tpot_p95_s > config.tpot_s),
        KV_CACHE: _half(replicas, lambda r: r.kv_usage > config.kv_high),
        QUEUE_WAIT: (bool(replicas) and fleet.num_waiting_at_callers > 0)
        or (lasting and any(wait_s > config.ttft_s for wait_s in waits_s)),
    }


def _half(replicas: tuple[ReplicaMetrics, ...], breached) -> bool:
    """Whether at least half the replicas (and one) breach."""
    num_breached = sum(1 for r in replicas if breached(r))
    return num_breached > 0 and 2 * num_breached >= len(replicas)


def _all_agree_down(
    fleet: FleetMetrics,
    breaches: Mapping[str, bool],
    capacities: Mapping[Hashable, ReplicaCapacity],
    mean: ReplicaCapacity,
    num_worst_case: int,
    num_counted: int,
    config: SloPolicyConfig,
) -> bool:
    """Whether every signal agrees on one replica fewer (module doc, step 4)."""
    if any(breaches.values()) or fleet.num_waiting_at_callers > 0:
        return False
    if any(r.kv_usage > config.kv_low for r in fleet.replicas):
        return False
    queue_limit_s = config.scale_down_utilization * config.ttft_s
    if any(_queue_wait_s(r, capacities, mean) > queue_limit_s for r in fleet.replicas):
        return False
    if num_counted - 1 >= 1:
        return num_worst_case <= num_counted - 1
    idle = all(r.num_running == 0 and r.num_waiting == 0 for r in fleet.replicas)
    return num_worst_case == 0 and idle
