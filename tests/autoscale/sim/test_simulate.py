"""`gaudi-serve simulate` end to end on a small trace with a calibration file."""

from __future__ import annotations

import json

import pytest

from autoscale.sim.step_calibrated import CalibratedStepCost, Measurement
from autoscale.sim.step_models import save_calibration
from autoscale.sim.summary import SUMMARY_FILE
from autoscale.sim.trace import TraceRequest, write_trace
from cluster.commands.cli import main
from engine.shapes import StepShape

REQUIRED_KEYS = (
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
)

CONFIG = """\
models:
  - name: sim-model
    engine: {max_model_len: 512, kv_cache_tokens: 4096, block_size: 16, max_num_seqs: 8,
             max_num_batched_tokens: 256}
    serve:
      slo: {ttft_s: 1.0, tpot_s: 0.1}
      autoscaling: {min_replicas: 1, max_replicas: 3, default_startup_s: 5}
"""


def calibration(path) -> None:
    """A measured-looking calibration: prefill 5 ms + 0.1 ms a token, decode 15 ms."""
    prefill = [
        Measurement(StepShape("prefill", b, q, -(-q // 16)), 0.005 + 1e-4 * b * q)
        for b in (1, 2, 4)
        for q in (16, 64, 256)
        if b * q <= 256
    ]
    decode = [
        Measurement(StepShape("decode", b, 1, n), 0.015 + 1e-4 * b)
        for b in (1, 2, 4, 8)
        for n in (1, 32)
    ]
    measurements = prefill + decode
    cost = CalibratedStepCost.from_measurements({"block_size": 16}, measurements)
    save_calibration(cost, path)


def test_simulate_writes_a_summary_with_the_required_keys(tmp_path, capsys):
    config = tmp_path / "serve.yaml"
    config.write_text(CONFIG)
    trace = tmp_path / "trace.jsonl"
    write_trace(
        trace,
        [TraceRequest(i * 0.05, 100 + i % 50, 30, "sys", 64) for i in range(200)],
    )
    calib = tmp_path / "calib.json"
    calibration(calib)
    out = tmp_path / "run"
    argv = ["simulate", "--config", str(config), "--trace", str(trace)]
    argv += ["--calibration", str(calib), "--router", "kv_aware", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    for key in REQUIRED_KEYS:
        assert key in summary, key
    assert summary["requests"] == summary["completed"] == 200
    assert summary["rejected"] == 0 and summary["prefix_hit_rate"] > 0
    assert "requests completed" in capsys.readouterr().out


def test_simulate_refuses_a_card_without_the_models_config_json(tmp_path, capsys):
    config = tmp_path / "serve.yaml"
    config.write_text(CONFIG)
    trace = tmp_path / "trace.jsonl"
    write_trace(trace, [TraceRequest(0.0, 10, 2)])
    argv = ["simulate", "--config", str(config), "--trace", str(trace), "--card", "gaudi2"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.parametrize("router", ["round_robin", "prefix_affinity"])
def test_simulate_runs_each_router(tmp_path, router):
    config = tmp_path / "serve.yaml"
    config.write_text(CONFIG)
    trace = tmp_path / "trace.jsonl"
    write_trace(trace, [TraceRequest(i * 0.1, 80, 8, "p", 32) for i in range(20)])
    calib = tmp_path / "calib.json"
    calibration(calib)
    argv = ["simulate", "--config", str(config), "--trace", str(trace), "--calibration"]
    assert main([*argv, str(calib), "--router", router, "--out", str(tmp_path / "o")]) == 0


def test_request_overhead_shifts_what_a_client_sees_and_is_measured_back():
    from autoscale.sim.records import RequestRecord
    from autoscale.sim.simulate import serving_overhead_s

    base = RequestRecord(0, 1.0, 16, 4, first_token_s=1.1, finish_s=1.4)
    late = base._replace(first_token_s=1.18, finish_s=1.48)
    assert serving_overhead_s([late], [base]) == pytest.approx(0.08)
    assert serving_overhead_s([base], [late]) == 0.0  # never negative
    with pytest.raises(ValueError, match="no request completed on both sides"):
        serving_overhead_s([base._replace(first_token_s=None, finish_s=None)], [base])


def test_request_overhead_adds_to_ttft_and_leaves_tpot(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(CONFIG)
    trace = tmp_path / "trace.jsonl"
    write_trace(trace, [TraceRequest(i * 0.5, 80, 8) for i in range(10)])
    calib = tmp_path / "calib.json"
    calibration(calib)
    argv = ["simulate", "--config", str(config), "--trace", str(trace), "--calibration"]
    argv += [str(calib), "--router", "round_robin"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--request-overhead-s", "0.25", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / SUMMARY_FILE).read_text())
    b = json.loads((tmp_path / "b" / SUMMARY_FILE).read_text())
    assert b["ttft_p50_s"] == pytest.approx(a["ttft_p50_s"] + 0.25)
    assert b["tpot_p50_s"] == pytest.approx(a["tpot_p50_s"])
    assert main([*argv, "--request-overhead-s", "-1", "--out", str(tmp_path / "c")]) == 2
