"""EngineStats: every field declares its metric kind; padding_ratio has one meaning."""

from __future__ import annotations

import dataclasses

from engine.buckets import padding_fraction
from engine.stats import COUNTER, GAUGE, METRIC_KINDS, EngineStats


def stats(**values) -> EngineStats:
    fields = [f.name for f in dataclasses.fields(EngineStats)]
    return EngineStats(**(dict.fromkeys(fields, 0) | values))


def test_every_field_declares_a_metric_kind():
    kinds = EngineStats.metric_kinds()
    for field in dataclasses.fields(EngineStats):
        assert field.metadata.get("kind") in METRIC_KINDS, f"{field.name} declares no kind"
    assert set(kinds) == {f.name for f in dataclasses.fields(EngineStats)} | {"padding_ratio"}


def test_rates_and_means_are_gauges_and_cumulative_totals_counters():
    kinds = EngineStats.metric_kinds()
    for name in ("acceptance_rate", "mean_accepted_tokens", "kv_usage", "padding_ratio"):
        assert kinds[name] == GAUGE, name
    for name in ("proposer_s", "num_steps", "num_generated_tokens", "num_accepted_tokens"):
        assert kinds[name] == COUNTER, name


def test_padding_ratio_is_padded_per_real_token_and_padding_fraction_the_padding_share():
    snapshot = stats(num_real_tokens=48, num_padded_tokens=64)
    assert snapshot.padding_ratio == 64 / 48
    assert padding_fraction(real_tokens=48, padded_tokens=64) == 0.25
    assert stats().padding_ratio == 1.0  # nothing run yet: no padding
