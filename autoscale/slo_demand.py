"""Token demand from replicas' cumulative counters: rates, a trend to forecast, a peak.

Replicas report cumulative counters, stamped with their own clock (`at`); the policy keeps
each replica's recent snapshots and derives rates over the last `window_s` (from the
oldest snapshot in it, or the newest before it when none is; a repeated snapshot keeps
the last rates, so calling the policy more often than replicas report changes nothing).
The window matters: bursty arrivals (a 1,000-token prompt lands at once) make a rate over
one second swing between 0 and several times the mean, and a policy that scales up on the
swings and down only on a window's peak (slo_policy) ends up at its maximum (measured in
the fleet simulator: 70B on h200, a CV-2 trace, rates over the 1 s between reports held
15 replicas where 4 meet the SLO; autoscale/SIMULATOR.md "Fleet study").

What is served is not what is asked when the fleet is saturated, so the prompt rate is
the arrival rate, by conservation:

    prompt arrivals/s = (prompt tokens taken off the queue + growth of the queue) / dt

A first snapshot, or counters that went back (the replica restarted under the same id), is
a baseline: no rates until the history spans half the window. The fleet's demand assumes
such a replica serves as much as the mean of the others (the router balances them);
otherwise every new replica would show as a dip in demand.

The demand trend (for the forecast one start-up time ahead) is a Theil-Sen slope (the
median of pairwise slopes, so one odd sample does not tilt it) over each half of a window,
trusted only where both halves agree and each is covered at least half-way (so a history
just begun is not extrapolated): the smaller of the two, and 0 unless both rise. A
ramp rises in both halves; a step (a burst that arrived and stays) is flat in one, so it is
not extrapolated into a bigger one.

Worked example (a replica reports twice, 10 s apart: 20k prompt tokens prefilled while its
queue grew by 5k, 4k tokens generated; then a ramp of load, and a step):

    >>> first = advance_counters(None, at=0.0, prompt_tokens_total=0,
    ...                          generated_tokens_total=0, num_queued_prompt_tokens=0)
    >>> later = advance_counters(first, at=10.0, prompt_tokens_total=20_000,
    ...                          generated_tokens_total=4_000, num_queued_prompt_tokens=5_000,
    ...                          window_s=20.0)
    >>> later.prompt_served_s, later.prompt_arrival_s, later.output_s, later.has_rates
    (2000.0, 2500.0, 400.0, True)
    >>> ramp = [(t, 1.0 + 0.01 * t) for t in range(0, 61, 5)]
    >>> round(trend_per_s(ramp, now=60.0, window_s=60.0), 4)
    0.01
    >>> step = [(t, 1.0 if t < 40 else 3.0) for t in range(0, 61, 5)]
    >>> round(trend_per_s(step, now=60.0, window_s=60.0), 9), peak(step, now=60.0, window_s=60.0)
    (0.0, 3.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

RATE_WINDOW_S = 30.0  # rates are averaged over this much of a replica's history
MIN_TREND_SAMPLES = 3  # per half window: fewer, and the trend is 0
MAX_TREND_SAMPLES = 48  # per half window: pairwise slopes over at most this many, spread


class ReplicaCounters(NamedTuple):
    """One replica's last counter snapshot and the rates derived from the one before."""

    at: float  # the replica's clock when it took the snapshot
    prompt_tokens_total: int
    generated_tokens_total: int
    num_queued_prompt_tokens: int
    prompt_served_s: float  # prompt tokens taken off its queue per second
    prompt_arrival_s: float  # served + queue growth, at least 0
    output_s: float  # tokens generated per second
    has_rates: bool  # False for a baseline (rates 0 are unknown, not idle)
    # earlier snapshots the rates may be taken from: (at, prompt, generated, queued), oldest
    # first, none older than the newest one before the rate window
    history: tuple[tuple[float, int, int, int], ...] = ()


def advance_counters(
    previous: ReplicaCounters | None,
    at: float,
    prompt_tokens_total: int,
    generated_tokens_total: int,
    num_queued_prompt_tokens: int,
    window_s: float = RATE_WINDOW_S,
) -> ReplicaCounters:
    """The replica's new snapshot with rates over the last `window_s` (module doc)."""
    if previous is not None and at == previous.at:
        return previous
    now = (at, prompt_tokens_total, generated_tokens_total, num_queued_prompt_tokens)
    history: tuple[tuple[float, int, int, int], ...] = ()
    if (
        previous is not None
        and at > previous.at
        and prompt_tokens_total >= previous.prompt_tokens_total
        and generated_tokens_total >= previous.generated_tokens_total
    ):
        snapshots = (*previous.history, tuple(previous[:4]))
        before = [i for i, snap in enumerate(snapshots) if snap[0] <= at - window_s]
        history = snapshots[before[-1] if before else 0 :]
    if not history:
        return ReplicaCounters(*now, 0.0, 0.0, 0.0, False)
    if at - history[0][0] < window_s / 2:  # too little history to average bursts over yet
        return ReplicaCounters(*now, 0.0, 0.0, 0.0, False, history)
    start_at, start_prompt, start_generated, start_queued = history[0]
    dt = at - start_at
    served = (prompt_tokens_total - start_prompt) / dt
    growth = (num_queued_prompt_tokens - start_queued) / dt
    output = (generated_tokens_total - start_generated) / dt
    return ReplicaCounters(*now, served, max(0.0, served + growth), output, True, history)


class FleetDemand(NamedTuple):
    """Tokens/s the fleet is asked for."""

    prompt_tokens_s: float
    output_tokens_s: float
    output_per_prompt_token: float | None  # the observed ratio; None if nothing served


def fleet_demand(
    counters: Sequence[ReplicaCounters], output_per_prompt_token: float | None
) -> FleetDemand:
    """Prompt arrivals, and the output they will ask for: arrivals x the output tokens
    generated per prompt token served (the ratio last observed when nothing was served;
    the output served when no ratio was ever observed). Replicas without rates yet count
    as the mean of the others (none: no demand)."""
    known = [c for c in counters if c.has_rates]
    scale = len(counters) / len(known) if known else 0.0
    arrival = scale * sum(c.prompt_arrival_s for c in known)
    served = scale * sum(c.prompt_served_s for c in known)
    output = scale * sum(c.output_s for c in known)
    if served > 0:
        output_per_prompt_token = output / served
        output = arrival * output_per_prompt_token
    elif output_per_prompt_token is not None:
        output = max(output, arrival * output_per_prompt_token)
    return FleetDemand(arrival, output, output_per_prompt_token)


def _window(samples: Sequence[tuple[float, float]], now: float, window_s: float) -> np.ndarray:
    rows = [(t, v) for t, v in samples if now - window_s <= t <= now]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)  # [n, 2]: (t, value)


def _slope(rows: np.ndarray, min_span_s: float) -> float | None:
    """The Theil-Sen slope of (t, value) rows sorted by t; None for too few, or for rows
    spanning less than min_span_s (a half window barely begun, as at start-up)."""
    if len(rows) < MIN_TREND_SAMPLES or rows[-1, 0] - rows[0, 0] < max(min_span_s, 1e-9):
        return None
    if len(rows) > MAX_TREND_SAMPLES:
        rows = rows[np.linspace(0, len(rows) - 1, MAX_TREND_SAMPLES).round().astype(int)]
    i, j = np.triu_indices(len(rows), k=1)
    dt = rows[j, 0] - rows[i, 0]
    distinct = dt > 0
    return float(np.median((rows[j, 1] - rows[i, 1])[distinct] / dt[distinct]))


def trend_per_s(samples: Sequence[tuple[float, float]], now: float, window_s: float) -> float:
    """The rise of the value per second over the window, when both halves agree (module
    doc); 0 for a flat, falling, stepped or too-short history. samples: (t, value)."""
    rows = _window(samples, now, window_s)
    middle = now - window_s / 2
    min_span_s = window_s / 4  # each half covered at least half-way
    halves = (rows[rows[:, 0] <= middle], rows[rows[:, 0] >= middle])
    slopes = [_slope(half, min_span_s) for half in halves]
    if any(s is None for s in slopes):
        return 0.0
    return max(0.0, min(slopes))


def peak(samples: Sequence[tuple[float, float]], now: float, window_s: float) -> float:
    """The largest value over the window (0 for none). samples: (t, value)."""
    rows = _window(samples, now, window_s)
    return float(rows[:, 1].max()) if len(rows) else 0.0
