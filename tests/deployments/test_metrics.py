"""Engine stats on /metrics: each is exported with the kind it declares, never guessed."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from deployments.metrics import SERVER_STAT_KINDS, ServeMetrics, engine_stat_kind
from engine import EngineStats


def exported_kinds(stats: dict[str, float]) -> dict[str, str]:
    text = ServeMetrics().render({("m", "r1"): stats}).decode()
    prefix = "gaudi_serve_engine_"
    return {
        family.name.removeprefix(prefix): family.type
        for family in text_string_to_metric_families(text)
        if family.name.startswith(prefix)
    }


def test_engine_stats_are_exported_with_their_declared_kinds():
    declared = EngineStats.metric_kinds() | SERVER_STAT_KINDS
    kinds = exported_kinds(dict.fromkeys(declared, 1.0))
    assert kinds == declared
    assert kinds["acceptance_rate"] == "gauge" and kinds["mean_accepted_tokens"] == "gauge"
    assert kinds["proposer_s"] == "counter" and kinds["padding_ratio"] == "gauge"


def test_counters_get_total_and_a_stat_without_a_kind_is_untyped():
    text = ServeMetrics().render({("m", "r1"): {"proposer_s": 2.5, "new_thing": 3.0}}).decode()
    assert 'gaudi_serve_engine_proposer_s_total{model="m",replica="r1"} 2.5' in text
    assert "# TYPE gaudi_serve_engine_new_thing untyped" in text
    assert engine_stat_kind("new_thing") is None


def test_router_rejections_and_the_autoscalers_decision_are_exported():
    from autoscale.router_stats import RouterStats

    stats = RouterStats()
    stats.rejected = 3
    decision = {
        "num_replicas": 3,
        "reason": "capacity",
        "limited_by": "max_replicas",
        "num_serving": 2,
        "num_starting": 1,
        "num_stuck": 0,
        "demand_tokens_s": 4960.0,
        "forecast_tokens_s": 5100.0,
        "capacity_tokens_s": 6200.0,
        "utilization": 0.8,
        "startup_s": 30.0,
        "published_at": 1.5e9,
    }
    text = ServeMetrics().render({}, {"m": [stats]}, {"m": decision}).decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    model = (("model", "m"),)
    assert values[("gaudi_serve_admission_rejected_total", model)] == 3
    assert values[("gaudi_serve_autoscaler_desired_replicas", model)] == 3
    assert values[("gaudi_serve_autoscaler_serving_replicas", model)] == 2
    assert values[("gaudi_serve_autoscaler_starting_replicas", model)] == 1
    assert values[("gaudi_serve_autoscaler_demand_tokens_per_second", model)] == 4960
    assert values[("gaudi_serve_autoscaler_capacity_tokens_per_second", model)] == 6200
    assert values[("gaudi_serve_autoscaler_utilization", model)] == 0.8
    labels = (("limited_by", "max_replicas"), ("model", "m"), ("reason", "capacity"))
    assert values[("gaudi_serve_autoscaler_decision", labels)] == 1
    # no decision published (Ray's own policy, or none yet): no autoscaler samples
    bare = ServeMetrics().render({}, {"m": [stats]}, {}).decode()
    assert "gaudi_serve_autoscaler_desired_replicas{" not in bare
