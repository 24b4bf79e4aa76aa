"""What a trace holds, at a glance (`gaudi-serve trace stats`): request count, span, rate,
token lengths and how much of the prompts a shared prefix covers."""

from __future__ import annotations

from collections.abc import Sequence

from autoscale.sim.summary import percentile
from autoscale.sim.trace import TraceRequest

__all__ = ["format_stats", "trace_stats"]


def trace_stats(requests: Sequence[TraceRequest]) -> dict[str, float | int | None]:
    """Keys: requests, duration_s (first to last arrival), mean_rate (arrivals per second
    between the first and the last: (requests - 1) / duration_s; None for a span of 0),
    prompt_tokens_{mean,p50,p95,p99,max} and the same of output_tokens, num_prefix_groups,
    prefixed_requests (share of requests in a group), prefix_share (prefix tokens / prompt
    tokens, summed over every request). Percentiles as autoscale.sim.summary.percentile."""
    n = len(requests)
    duration_s = requests[-1].arrival_s - requests[0].arrival_s if requests else 0.0
    stats: dict[str, float | int | None] = {
        "requests": n,
        "duration_s": duration_s,
        "mean_rate": (n - 1) / duration_s if duration_s > 0 else None,
    }
    for name in ("prompt_tokens", "output_tokens"):
        values = [getattr(r, name) for r in requests]
        stats[f"{name}_mean"] = sum(values) / n if n else None
        for q in (50, 95, 99):
            stats[f"{name}_p{q}"] = percentile(values, q)
        stats[f"{name}_max"] = max(values, default=None)
    prompt_total = sum(r.prompt_tokens for r in requests)
    stats["num_prefix_groups"] = len({r.prefix_id for r in requests if r.prefix_id is not None})
    stats["prefixed_requests"] = (
        sum(1 for r in requests if r.prefix_id is not None) / n if n else None
    )
    stats["prefix_share"] = (
        sum(r.prefix_tokens for r in requests) / prompt_total if prompt_total else None
    )
    return stats


def format_stats(stats: dict[str, float | int | None]) -> str:
    """One `key: value` line per stat, floats to 4 significant digits."""
    width = max(len(k) for k in stats)
    lines = []
    for key, value in stats.items():
        text = "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
