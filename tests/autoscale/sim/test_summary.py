"""The run summary on hand-computed records and samples: every key, percentiles,
attainment with rejected and lost requests, the replica-seconds integral, nulls for no
data, the JSON file, and `compare`."""

from __future__ import annotations

import json

import pytest

from autoscale.sim.records import FleetSample, RequestRecord
from autoscale.sim.summary import (
    compare,
    percentile,
    summarize,
    write_measurements,
    write_summary,
)

REQUIRED = {
    "requests",
    "completed",
    "rejected",
    "ttft_p50_s",
    "ttft_p95_s",
    "tpot_p50_s",
    "output_tok_s",
    "slo_attainment",
    "replica_seconds",
    "num_scale_events",
    "ttft_p99_s",
    "tpot_p95_s",
    "e2e_p50_s",
    "prefix_hit_rate",
    "lost",
}

# index, arrival, prompt, output, first token, finish, rejected, replica, cached
RECORDS = [
    RequestRecord(0, 0.0, 100, 11, 0.5, 1.5, False, "r0", 0),  # ttft 0.5, tpot 0.1: meets
    RequestRecord(1, 1.0, 100, 11, 2.0, 5.0, False, "r0", 50),  # ttft 1.0, tpot 0.3: misses
    RequestRecord(2, 2.0, 200, 1, 4.0, 4.0, False, "r1", 100),  # ttft 2.0, no tpot: misses
    RequestRecord(3, 3.0, 100, 5, 3.2, 3.6, False, "r1", 0),  # ttft 0.2, tpot 0.1: meets
    RequestRecord(4, 4.0, 100, 0, None, None, True),  # rejected
    RequestRecord(5, 5.0, 100, 3, 5.5, None, False, "r0", 0),  # lost after its first token
]
SAMPLES = [
    FleetSample(0.0, 1, 0, 1, (0.1,)),
    FleetSample(2.0, 1, 1, 2, (0.5,)),
    FleetSample(6.0, 2, 0, 2, (0.2, 0.4)),
    FleetSample(8.0, 1, 0, 1, (0.3,)),
]


def test_percentile_is_linear_between_closest_ranks():
    assert percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert percentile([4, 1, 3, 2], 50) == pytest.approx(2.5)
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2], 0) == 1 and percentile([1, 2], 100) == 2
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match=r"q must be in \[0, 100\]"):
        percentile([1], 101)


def test_summary_values():
    s = summarize(RECORDS, SAMPLES, slo_ttft_s=1.5, slo_tpot_s=0.2, duration_s=10.0)
    assert set(s) >= REQUIRED
    assert (s["requests"], s["completed"], s["rejected"], s["lost"]) == (6, 4, 1, 1)
    # TTFTs of every request with a first token: 0.5, 1.0, 2.0, 0.2, 0.5
    assert s["ttft_p50_s"] == pytest.approx(0.5)
    # sorted 0.2 0.5 0.5 1.0 2.0: p95 at position 3.8 -> 1.0 + 0.8 * 1.0
    assert s["ttft_p95_s"] == pytest.approx(1.8)
    assert s["ttft_p99_s"] == pytest.approx(1.96)
    assert s["ttft_mean_s"] == pytest.approx(4.2 / 5)
    # TPOTs of completed requests with 2+ tokens: 0.1, 0.3, 0.1
    assert s["tpot_p50_s"] == pytest.approx(0.1)
    assert s["tpot_p95_s"] == pytest.approx(0.1 + 0.9 * 0.2)
    # e2e of completed: 1.5, 4.0, 2.0, 0.6 -> sorted 0.6 1.5 2.0 4.0, p50 1.75
    assert s["e2e_p50_s"] == pytest.approx(1.75)
    # output tokens of completed requests over 10 s
    assert s["output_tokens"] == 11 + 11 + 1 + 5
    assert s["output_tok_s"] == pytest.approx(2.8)
    # meets: requests 0 and 3 of 6 (the rejected and the lost one count as misses)
    assert s["slo_attainment"] == pytest.approx(2 / 6)
    # cached / prompt over accepted requests: 150 / 600
    assert s["prefix_hit_rate"] == pytest.approx(0.25)
    # (1+0)*2 + (1+1)*4 + 2*2 + 1*(10-8) = 2 + 8 + 4 + 2
    assert s["replica_seconds"] == pytest.approx(16.0)
    assert s["mean_replicas"] == pytest.approx(1.6)
    assert s["num_scale_events"] == 2
    assert s["max_replicas"] == 2
    assert s["kv_usage_max"] == pytest.approx(0.5)
    assert s["kv_usage_mean"] == pytest.approx(1.5 / 5)
    assert (s["duration_s"], s["slo_ttft_s"], s["slo_tpot_s"]) == (10.0, 1.5, 0.2)


def test_one_token_answers_meet_the_tpot_slo():
    s = summarize(RECORDS[2:3], [], slo_ttft_s=2.0, slo_tpot_s=0.01)
    assert s["slo_attainment"] == 1.0
    assert s["tpot_p50_s"] is None


def test_default_duration_is_the_last_event():
    s = summarize(RECORDS, SAMPLES[:2], slo_ttft_s=1, slo_tpot_s=1)
    assert s["duration_s"] == 5.5  # request 5's first token
    assert s["replica_seconds"] == pytest.approx(1 * 2.0 + 2 * 3.5)


def test_no_data_is_null_not_zero():
    s = summarize([], [], slo_ttft_s=1, slo_tpot_s=1)
    assert s["requests"] == 0 and s["completed"] == 0
    for key in REQUIRED - {"requests", "completed", "rejected", "lost"}:
        assert s[key] is None, key
    only_rejected = summarize([RECORDS[4]], [], slo_ttft_s=1, slo_tpot_s=1)
    assert only_rejected["slo_attainment"] == 0.0
    assert only_rejected["ttft_p50_s"] is None and only_rejected["prefix_hit_rate"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slo_ttft_s": 0}, r"slo_ttft_s must be a number > 0"),
        ({"slo_tpot_s": -1}, r"slo_tpot_s must be a number > 0"),
        ({"duration_s": float("nan")}, r"duration_s must be a number >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        summarize(RECORDS, SAMPLES, **({"slo_ttft_s": 1, "slo_tpot_s": 1} | kwargs))


def test_write_summary_sorted_and_indented(tmp_path):
    s = summarize(RECORDS, SAMPLES, 1.5, 0.2)
    path = write_summary(tmp_path / "out", s)
    text = path.read_text()
    assert path.name == "summary.json"
    assert json.loads(text) == s
    assert text == json.dumps(s, sort_keys=True, indent=2) + "\n"
    assert '\n  "completed": 4,\n' in text


def test_write_measurements_round_trip(tmp_path):
    records_path, samples_path = write_measurements(tmp_path, RECORDS, SAMPLES)
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    assert [RequestRecord(**r) for r in records] == RECORDS
    samples = [json.loads(line) for line in samples_path.read_text().splitlines()]
    assert [FleetSample(**{**s, "kv_usage": tuple(s["kv_usage"])}) for s in samples] == SAMPLES


def test_compare_relative_error_against_the_reference():
    a = {"ttft_p50_s": 1.1, "tpot_p50_s": 0.09, "completed": 10, "replica_seconds": None}
    b = {"ttft_p50_s": 1.0, "tpot_p50_s": 0.1, "completed": 0, "replica_seconds": 5.0}
    out = compare(a, b, ["ttft_p50_s", "tpot_p50_s", "completed", "replica_seconds", "x"])
    assert out["ttft_p50_s"]["rel_error"] == pytest.approx(0.1)
    assert out["tpot_p50_s"]["rel_error"] == pytest.approx(-0.1)
    assert out["completed"] == {"a": 10, "b": 0, "rel_error": None}
    assert out["replica_seconds"]["rel_error"] is None
    assert out["x"] == {"a": None, "b": None, "rel_error": None}
