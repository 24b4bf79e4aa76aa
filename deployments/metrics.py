"""Prometheus metrics of the HTTP front door, labelled by model.

The ingress observes requests, time to first token (TTFT), time per output token (TPOT)
and token counts as they pass through it. Engine state (queue, running, KV usage, bucket
misses, padding, throughput) lives in the replicas: at scrape time the ingress asks each
replica for its stats and `render` turns them into gauges and counters labelled by model
and replica.

Engine stats are read generically, so fields the engine adds later appear without code
here. Kinds are never guessed from names: each EngineStats field declares its own
(`EngineStats.metric_kinds()`), and SERVER_STAT_KINDS those LLMServer.stats adds. A gauge
is `gaudi_serve_engine_<field>`, a cumulative counter `gaudi_serve_engine_<field>_total`;
a stat of no declared kind is exported untyped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from autoscale.router_stats import BucketHistogram, RouterStats
from engine import METRIC_COUNTER, METRIC_GAUGE, EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "gaudi_serve"
# Stats LLMServer.stats adds to the engine's, by kind (the kinds engine.stats declares).
SERVER_STAT_KINDS = {
    "generation_tokens_per_s": METRIC_GAUGE,
    "is_healthy": METRIC_GAUGE,
    "forward_cpu_s": METRIC_COUNTER,
    "num_step_stream_requests": METRIC_COUNTER,
}
_TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS_S = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)

# (model, replica id) -> that replica's engine stats
EngineStatsByReplica = Mapping[tuple[str, str], Mapping[str, float]]
# model -> the stats of its KV-aware routers in this process (autoscale/feedback.py)
RouterStatsByModel = Mapping[str, Sequence[RouterStats]]
# model -> the SLO autoscaler's last published decision (autoscale/decision_board.py)
DecisionsByModel = Mapping[str, Mapping[str, Any]]


class ServeMetrics:
    """The ingress's own metrics, in a registry of their own (not the process default, so
    two ingress instances in one process never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Finished HTTP generation requests by model, API route and HTTP status.",
            ["model", "route", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight",
            "Generation requests being served.",
            ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from the request's arrival to its first generated token.",
            ["model"],
            buckets=_TTFT_BUCKETS_S,
            registry=r,
        )
        self.tpot = Histogram(
            f"{PREFIX}_time_per_output_token_seconds",
            "Mean time between generated tokens after the first, per request.",
            ["model"],
            buckets=_TPOT_BUCKETS_S,
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens",
            "Prompt tokens of finished requests.",
            ["model"],
            registry=r,
        )
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "Generated tokens.", ["model"], registry=r
        )

    def on_request_start(self, model: str) -> None:
        self.in_flight.labels(model).inc()

    def on_request_end(self, model: str, route: str, status: int) -> None:
        self.in_flight.labels(model).dec()
        self.requests.labels(model, route, str(status)).inc()

    def on_sample_done(
        self,
        model: str,
        *,
        ttft_s: float,
        decode_s: float,
        num_prompt_tokens: int,
        num_generated_tokens: int,
    ) -> None:
        """One engine request finished: `decode_s` spans its first to its last token."""
        self.ttft.labels(model).observe(ttft_s)
        if num_generated_tokens > 1:
            self.tpot.labels(model).observe(decode_s / (num_generated_tokens - 1))
        self.prompt_tokens.labels(model).inc(num_prompt_tokens)
        self.generation_tokens.labels(model).inc(num_generated_tokens)

    def render(
        self,
        engine_stats: EngineStatsByReplica,
        router_stats: RouterStatsByModel | None = None,
        decisions: DecisionsByModel | None = None,
    ) -> bytes:
        """The Prometheus text exposition: these metrics, the replicas' engine stats, the
        routers' (decisions by reason, requests refused by admission control, decision
        latency, predicted vs observed TTFT, prefix-cache blocks mirrored per replica),
        then the SLO autoscaler's last decision per model."""
        engine = CollectorRegistry()
        engine.register(_EngineStatsCollector(engine_stats))
        engine.register(_RouterStatsCollector(router_stats or {}))
        engine.register(_DecisionCollector(decisions or {}))
        return generate_latest(self.registry) + generate_latest(engine)


@functools.cache
def _stat_kinds() -> dict[str, str]:
    return EngineStats.metric_kinds() | SERVER_STAT_KINDS


def engine_stat_kind(field: str) -> str | None:
    """METRIC_COUNTER or METRIC_GAUGE, as the stat declares it; None when it declares none."""
    return _stat_kinds().get(field)


def engine_metric_name(field: str) -> str:
    """`kv_usage` -> `gaudi_serve_engine_kv_usage`; counters get `_total` on exposition."""
    return f"{PREFIX}_engine_{re.sub(r'[^a-zA-Z0-9_]', '_', field)}"


class _EngineStatsCollector:
    """A one-shot collector over a snapshot of every replica's engine stats."""

    def __init__(self, stats: EngineStatsByReplica):
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        fields = sorted({field for values in self.stats.values() for field in values})
        for field in fields:
            name, doc = engine_metric_name(field), f"Engine stat {field!r} of each replica."
            family = _FAMILIES.get(engine_stat_kind(field), UnknownMetricFamily)(
                name, doc, labels=["model", "replica"]
            )
            for (model, replica), values in sorted(self.stats.items()):
                if field in values:
                    family.add_metric([model, replica], float(values[field]))
            yield family


class _RouterStatsCollector:
    """A one-shot collector over the routers' stats, summed per model."""

    def __init__(self, stats: RouterStatsByModel):
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        decisions = CounterMetricFamily(
            f"{PREFIX}_router_decisions",
            "Routing decisions by reason: cache_hit, least_wait, fallback (power-of-two while "
            "a replica has no step times yet), spilled (the best replica was full).",
            labels=["model", "reason"],
        )
        rejected = CounterMetricFamily(
            f"{PREFIX}_admission_rejected",
            "Requests refused by admission control (serve.max_queue_wait_s) with a 429.",
            labels=["model"],
        )
        blocks = GaugeMetricFamily(
            f"{PREFIX}_router_cached_blocks",
            "Prefix-cache blocks the router mirrors for each replica.",
            labels=["model", "replica"],
        )
        histograms = {
            "decision_latency_s": (
                f"{PREFIX}_router_decision_latency_seconds",
                "Time the router took to rank the replicas for one request.",
            ),
            "predicted_ttft_s": (
                f"{PREFIX}_router_predicted_ttft_seconds",
                "Time to first token the router predicted on the replica it chose.",
            ),
            "observed_ttft_s": (
                f"{PREFIX}_router_observed_ttft_seconds",
                "Time to first token observed for the same requests.",
            ),
        }
        families = {
            key: HistogramMetricFamily(name, doc, labels=["model"])
            for key, (name, doc) in histograms.items()
        }
        for model, routers in sorted(self.stats.items()):
            if not routers:
                continue
            reasons = sorted({reason for r in routers for reason in r.decisions})
            for reason in reasons:
                decisions.add_metric([model, reason], sum(r.decisions[reason] for r in routers))
            rejected.add_metric([model], sum(r.rejected for r in routers))
            for router in routers:
                for replica, num in sorted(router.cached_blocks.items()):
                    blocks.add_metric([model, replica], num)
            for key, family in families.items():
                merged = _merged([getattr(r, key) for r in routers])
                buckets = [(_bound(b), n) for b, n in merged.cumulative()]
                family.add_metric([model], buckets, merged.total)
        yield decisions
        yield rejected
        yield blocks
        yield from families.values()


# decision field -> (metric suffix, help); each a gauge labelled by model
_DECISION_GAUGES = {
    "num_replicas": ("desired_replicas", "Replicas the SLO autoscaler wants (its last decision)."),
    "num_serving": ("serving_replicas", "Replicas serving, as the autoscaler counted them."),
    "num_starting": ("starting_replicas", "Replicas starting (stuck ones included)."),
    "num_stuck": ("stuck_replicas", "Replicas starting for over stuck_startup_factor x start-up."),
    "demand_tokens_s": ("demand_tokens_per_second", "Prompt + output tokens/s asked now."),
    "forecast_tokens_s": (
        "forecast_tokens_per_second",
        "Demand forecast one start-up time ahead (tokens/s).",
    ),
    "capacity_tokens_s": (
        "capacity_tokens_per_second",
        "What the counted replicas serve at the SLO (tokens/s).",
    ),
    "utilization": ("utilization", "Load now / replicas counted (1: all busy at the SLO)."),
    "startup_s": ("startup_seconds", "A replica's start-up time the autoscaler assumes."),
    "published_at": ("decision_timestamp_seconds", "When the decision was published (Unix)."),
}


class _DecisionCollector:
    """A one-shot collector over the SLO autoscaler's last decision per model."""

    def __init__(self, decisions: DecisionsByModel):
        self.decisions = decisions

    def collect(self) -> Iterable[Metric]:
        gauges = {
            key: GaugeMetricFamily(f"{PREFIX}_autoscaler_{suffix}", doc, labels=["model"])
            for key, (suffix, doc) in _DECISION_GAUGES.items()
        }
        info = GaugeMetricFamily(
            f"{PREFIX}_autoscaler_decision",
            "The last decision's reason (the signal) and the bound that limited its count "
            "(none, min_replicas, max_replicas, cluster_capacity); always 1.",
            labels=["model", "reason", "limited_by"],
        )
        for model, decision in sorted(self.decisions.items()):
            for key, family in gauges.items():
                value = decision.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    family.add_metric([model], float(value))
            limited = decision.get("limited_by") or "none"
            info.add_metric([model, str(decision.get("reason")), str(limited)], 1.0)
        yield from gauges.values()
        yield info


def _merged(histograms: Sequence[BucketHistogram]) -> BucketHistogram:
    out = BucketHistogram(histograms[0].bounds)
    for h in histograms:
        out.counts = [a + b for a, b in zip(out.counts, h.counts, strict=True)]
        out.total += h.total
        out.count += h.count
    return out


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


_FAMILIES = {METRIC_COUNTER: CounterMetricFamily, METRIC_GAUGE: GaugeMetricFamily}
