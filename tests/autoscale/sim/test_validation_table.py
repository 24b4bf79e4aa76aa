"""The comparison logic of benchmarks/simulator_validation.py: errors, winners, goals."""

import math

import pytest

from benchmarks.simulator_validation import (
    compare_run,
    goal_lines,
    markdown_tables,
    pick_winner,
    relative_error,
    router_verdicts,
)


def summary(tok_s=100.0, tpot=0.02, ttft50=0.2, ttft95=1.0, slo=0.9, hit=0.5, requests=10):
    return {
        "requests": requests,
        "output_tok_s": tok_s,
        "tpot_p50_s": tpot,
        "ttft_p50_s": ttft50,
        "ttft_p95_s": ttft95,
        "slo_attainment": slo,
        "prefix_hit_rate": hit,
    }


def row(trace, replicas, router, real, sim):
    return {
        "trace": trace,
        "replicas": replicas,
        "router": router,
        "real": real,
        "sim": sim,
        "compare": compare_run(real, sim),
    }


def test_relative_error_is_sim_minus_real_over_real_and_none_without_data():
    assert relative_error(110.0, 100.0) == pytest.approx(0.10)
    assert relative_error(90.0, -100.0) == pytest.approx(1.9)
    assert relative_error(None, 1.0) is None
    assert relative_error(1.0, None) is None
    assert relative_error(1.0, 0.0) is None


def test_compare_run_applies_each_metric_tolerance():
    real = summary()
    sim = summary(tok_s=109.0, tpot=0.0225, ttft50=0.23, ttft95=1.16)
    cells = compare_run(real, sim)
    assert cells["output_tok_s"]["ok"] is True  # +9% <= 10%
    assert cells["tpot_p50_s"]["ok"] is False  # +12.5% > 10%
    assert cells["ttft_p50_s"]["ok"] is True  # +15% <= 15%
    assert cells["ttft_p95_s"]["ok"] is False  # +16% > 15%
    assert cells["ttft_p95_s"]["tolerance"] == 0.15
    missing = compare_run(summary(ttft95=None), summary())
    assert missing["ttft_p95_s"]["ok"] is None and missing["ttft_p95_s"]["rel_error"] is None


def test_pick_winner_lower_and_higher():
    assert pick_winner({"a": 1.0, "b": 1.5}, lower_wins=True) == ("a", pytest.approx(0.5))
    assert pick_winner({"a": 0.8, "b": 1.0}, lower_wins=False) == ("b", pytest.approx(0.25))
    winner, margin = pick_winner({"a": 1.0, "b": None}, lower_wins=True)
    assert winner == "a" and math.isnan(margin)
    winner, margin = pick_winner({"a": 1.0, "b": 1.01}, lower_wins=True)
    assert winner == "tie" and margin == pytest.approx(0.01)
    winner, margin = pick_winner({}, lower_wins=True)
    assert winner is None and math.isnan(margin)


def test_router_verdicts_same_winner_and_margin_tolerance():
    rows = [
        # real: kv_aware wins by 100%; sim: kv_aware by 80% -> margin error -20%: met
        row("p", 2, "kv_aware", summary(ttft95=1.0), summary(ttft95=1.0)),
        row("p", 2, "round_robin", summary(ttft95=2.0), summary(ttft95=1.8)),
        # real: round_robin wins; sim: kv_aware wins -> missed
        row("s", 2, "kv_aware", summary(ttft95=1.1), summary(ttft95=1.0)),
        row("s", 2, "round_robin", summary(ttft95=1.0), summary(ttft95=1.2)),
        # one replica: shown, not judged
        row("s", 1, "kv_aware", summary(ttft95=1.0), summary(ttft95=1.0)),
        row("s", 1, "round_robin", summary(ttft95=1.05), summary(ttft95=1.0)),
    ]
    verdicts = {(v["trace"], v["replicas"]): v for v in router_verdicts(rows)}
    p = verdicts[("p", 2)]
    assert p["judged"] and p["same_winner"] and p["ok"]
    assert p["real"]["margin"] == pytest.approx(1.0)
    assert p["margin_error"] == pytest.approx(-0.2)
    s = verdicts[("s", 2)]
    assert s["judged"] and not s["same_winner"] and not s["ok"]
    assert s["real"]["winner"] == "round_robin" and s["sim"]["winner"] == "kv_aware"
    assert not verdicts[("s", 1)]["judged"]


def test_router_verdicts_margin_off_by_more_than_25_percent_misses():
    rows = [
        row("p", 2, "kv_aware", summary(ttft95=1.0), summary(ttft95=1.0)),
        row("p", 2, "round_robin", summary(ttft95=2.0), summary(ttft95=1.5)),
    ]
    (verdict,) = router_verdicts(rows)
    assert verdict["same_winner"] and verdict["margin_error"] == pytest.approx(-0.5)
    assert not verdict["ok"]


def test_router_verdicts_a_tie_in_both_agrees_and_a_tie_in_one_misses():
    rows = [
        row("a", 2, "kv_aware", summary(ttft95=1.0), summary(ttft95=1.0)),
        row("a", 2, "round_robin", summary(ttft95=1.01), summary(ttft95=1.0)),
        row("b", 2, "kv_aware", summary(ttft95=1.0), summary(ttft95=1.0)),
        row("b", 2, "round_robin", summary(ttft95=1.5), summary(ttft95=1.0)),
    ]
    verdicts = {v["trace"]: v for v in router_verdicts(rows)}
    assert verdicts["a"]["real"]["winner"] == verdicts["a"]["sim"]["winner"] == "tie"
    assert verdicts["a"]["ok"]
    assert verdicts["b"]["real"]["winner"] == "kv_aware" and verdicts["b"]["sim"]["winner"] == "tie"
    assert not verdicts["b"]["ok"]


def test_goal_lines_and_tables_name_the_worst_run_and_failures():
    rows = [
        row("p", 2, "kv_aware", summary(), summary(tok_s=105.0)),
        row("p", 2, "round_robin", summary(ttft95=2.0), summary(tok_s=80.0, ttft95=1.8)),
        {"trace": "q", "replicas": 1, "router": "kv_aware", "failed": "TimeoutError: x"},
    ]
    verdicts = router_verdicts(rows)
    lines = goal_lines(rows, verdicts)
    assert lines[0].startswith("- output tok/s within 10%: MISSED, 1/2 runs (worst -20.0%, p 2x ")
    assert lines[1].startswith("- TPOT p50 within 10%: met, 2/2 runs")
    assert "same router winner (TTFT p95), margin within 25%: met, 1/1" in lines[4]
    assert lines[5] == "- runs that failed (not compared): 1"
    tables = markdown_tables(rows, verdicts)
    assert "| q | 1 | kv_aware | failed: TimeoutError: x" in tables
    assert "-20.0% ✗" in tables


def test_paired_differences_matches_requests_by_trace_line():
    from autoscale.sim.records import RequestRecord
    from benchmarks.simulator_validation import paired_differences

    real = [
        RequestRecord(0, 0.0, 10, 5, 0.30, 0.70),  # ttft 300 ms, tpot 100 ms
        RequestRecord(1, 1.0, 10, 5, 1.10, 1.30),  # ttft 100 ms, tpot 50 ms
        RequestRecord(2, 2.0, 10, 5, None, None),  # lost: left out
    ]
    sim = [
        RequestRecord(1, 1.0, 10, 5, 1.05, 1.15),  # ttft 50 ms, tpot 25 ms
        RequestRecord(0, 0.0, 10, 5, 0.10, 0.30),  # ttft 100 ms, tpot 50 ms
        RequestRecord(2, 2.0, 10, 5, 2.10, 2.50),
    ]
    assert paired_differences(real, sim) == {
        "requests": 2,
        "ttft_delta_p50_ms": pytest.approx(125.0),
        "tpot_ratio_p50": pytest.approx(2.0),
    }
