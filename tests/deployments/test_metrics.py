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
