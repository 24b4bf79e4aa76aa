"""FleetSamples of a running gaudi-serve server, read over HTTP during a replay.

    GET /health    {"replicas": {model: {replica_id: state}}}: healthy replicas count as
                   serving, "starting" ones as starting (deployments.replica_stats)
    GET /metrics   gaudi_serve_engine_kv_usage{model, replica}: each serving replica's KV
                   usage (deployments.metrics)

The server does not expose the autoscaler's target, so `target_replicas` is serving +
starting: the replicas Serve has been asked for, as far as the outside can tell. A
scale-up shows once its replica starts, a scale-down once it is gone.
"""

from __future__ import annotations

from typing import Any

from autoscale.sim.records import FleetSample

KV_USAGE_METRIC = "gaudi_serve_engine_kv_usage"
HEALTHY, STARTING = "healthy", "starting"

__all__ = ["fleet_sample", "kv_usage_by_replica", "probe_fleet"]


def fleet_sample(
    time_s: float, health: dict[str, Any], metrics_text: str, model: str
) -> FleetSample:
    """One sample of `model` from a /health body and the /metrics text."""
    states = (health.get("replicas") or {}).get(model) or {}
    serving = sorted(r for r, state in states.items() if state == HEALTHY)
    num_starting = sum(1 for state in states.values() if state == STARTING)
    usage = kv_usage_by_replica(metrics_text, model)
    kv = tuple(usage[r] for r in serving if r in usage)
    return FleetSample(time_s, len(serving), num_starting, len(serving) + num_starting, kv)


def kv_usage_by_replica(metrics_text: str, model: str) -> dict[str, float]:
    """{replica: KV usage 0..1} of `model` from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    usage = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != KV_USAGE_METRIC:
            continue
        for sample in family.samples:
            if sample.labels.get("model") == model and "replica" in sample.labels:
                usage[sample.labels["replica"]] = float(sample.value)
    return usage


async def probe_fleet(client, url: str, model: str, time_s: float, timeout_s: float):
    """A FleetSample from the server at `url` (an httpx.AsyncClient); raises httpx errors
    and ValueError (a body that is not what the server sends)."""
    health = await client.get(f"{url}/health", timeout=timeout_s)
    metrics = await client.get(f"{url}/metrics", timeout=timeout_s)
    if metrics.status_code != 200:
        raise ValueError(f"GET /metrics answered HTTP {metrics.status_code}")
    body = health.json()  # 503 too carries the replica states
    if not isinstance(body, dict):
        raise ValueError(f"GET /health answered {type(body).__name__}, expected an object")
    return fleet_sample(time_s, body, metrics.text, model)
