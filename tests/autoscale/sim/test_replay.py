"""`gaudi-serve replay` against a real Serve app on 127.0.0.1 (one tiny model, one start
for the module): a small trace replayed open loop with token-id prompts, the summary and
files it writes, a stop that cancels what is in flight, and the argument checks against
the server. Teardown: no request left in flight at the server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading

import httpx
import pytest

from autoscale.sim.fleet_probe import fleet_sample
from autoscale.sim.replay import ReplayConfig, model_card, replay, warm_up
from autoscale.sim.trace import TraceRequest, write_trace
from cluster.commands.cli import main
from tests.deployments.serve_fixtures import (
    engine_stat,
    model_entry,
    parse_metrics,
    running_app,
    wait_until,
)

MODEL = "tiny"
VOCAB_SIZE = 512  # tests/conftest.py's TINY_VOCAB
TRACE = [
    TraceRequest(0.0, 40, 6, "system", 32),
    TraceRequest(0.1, 20, 6),
    TraceRequest(0.2, 48, 6, "system", 32),
    TraceRequest(0.3, 24, 1),
    TraceRequest(0.4, 36, 6, "system", 32),
]


@pytest.fixture(scope="module")
def url(tiny_model_dir):
    with running_app([model_entry(MODEL, tiny_model_dir("llama"))]) as base_url:
        yield base_url
        wait_until(lambda: _in_flight(base_url) == 0, timeout_s=60)


def _in_flight(base_url: str) -> float:
    metrics = parse_metrics(httpx.get(f"{base_url}/metrics", timeout=10).text)
    key = ("gaudi_serve_requests_in_flight", frozenset({("model", MODEL)}))
    return metrics.get(key, 0.0)


def test_replay_writes_the_summary_of_what_it_measured(url, tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    write_trace(trace, TRACE)
    out = tmp_path / "out"
    argv = ["replay", "--trace", str(trace), "--url", url, "--model", MODEL, "--out", str(out)]
    argv += ["--vocab-size", str(VOCAB_SIZE), "--sample-interval", "0.5", "--timeout", "300"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["requests"], summary["completed"], summary["rejected"]) == (5, 5, 0)
    assert summary["lost"] == 0 and summary["replay"]["errors"] == {}
    assert summary["replay"]["warmup_requests"] == 1
    assert summary["output_tokens"] == 6 * 4 + 1
    for key in ("ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "output_tok_s", "slo_attainment"):
        assert summary[key] is not None and summary[key] > 0, key
    assert 0.0 <= summary["prefix_hit_rate"] <= 1.0
    assert summary["replay"]["is_interrupted"] is False
    assert summary["replica_seconds"] > 0 and summary["num_scale_events"] == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["output_tokens"] for r in records] == [6, 6, 6, 1, 6]
    for record, request in zip(records, TRACE, strict=True):
        assert record["arrival_s"] == request.arrival_s
        assert request.arrival_s < record["first_token_s"] <= record["finish_s"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    # Probes may time out on a busy 2-core machine (counted in probe_errors); the last
    # probe comes after every request ended.
    assert samples and all(s["num_replicas"] == 1 and s["num_starting"] == 0 for s in samples)
    assert all(len(s["kv_usage"]) == 1 for s in samples)
    for name in ("replicas.png", "latency.png", "kv_usage.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_stop_cancels_in_flight_requests_and_keeps_what_was_measured(url):
    # The second request is due in 1000 s: only the stop can end this run early.
    trace = [TraceRequest(0.0, 20, 100), TraceRequest(1000.0, 20, 4)]
    config = ReplayConfig(url, MODEL, VOCAB_SIZE, timeout_s=300, sample_interval_s=0)

    async def stop_once_generating(client, stop: asyncio.Event) -> None:
        # NOTE: stop only once the engine runs the request: a request dropped before its
        # answer began leaves the ingress's in-flight count up (see the report).
        while not await _num_running(client, url):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        stop.set()

    async def run():
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=30) as client:
            await warm_up(client, config)
            stopper = asyncio.create_task(stop_once_generating(client, stop))
            result = await replay(trace, config, client, stop)
            await asyncio.wait_for(stopper, 60)
        return result

    result = asyncio.run(run())
    assert result.is_interrupted and result.num_not_sent == 1
    assert len(result.records) == 1 and not result.records[0].rejected
    record = result.records[0]
    assert record.finish_s is None or record.output_tokens == 100  # cancelled, or done first
    assert result.samples == [] and result.errors == {}
    wait_until(lambda: _in_flight(url) == 0, timeout_s=60)


async def _num_running(client, base_url: str) -> float:
    metrics = parse_metrics((await client.get(f"{base_url}/metrics")).text)
    return sum(engine_stat(metrics, "num_running", MODEL).values())


def test_ctrl_c_stops_the_command_and_it_still_writes_the_summary(url, tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [TraceRequest(0.0, 20, 100), TraceRequest(1000.0, 20, 4)])
    out = tmp_path / "out"
    before = _num_requests(url)

    def interrupt_once_replaying() -> None:
        # Once the server counted the warm-up and the first trace request, the replay
        # waits for the second one (its signal handlers are in): interrupt that wait.
        wait_until(lambda: _num_requests(url) >= before + 2, 120, 0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt_once_replaying)
    thread.start()
    argv = ["replay", "--trace", str(trace), "--url", url, "--model", MODEL, "--out", str(out)]
    argv += ["--vocab-size", str(VOCAB_SIZE), "--sample-interval", "0", "--no-plots"]
    try:
        assert main(argv) == 0
    finally:
        thread.join()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replay"]["is_interrupted"] is True
    assert summary["replay"]["num_not_sent"] == 1
    assert (summary["requests"], summary["completed"]) == (1, 1)
    assert summary["replica_seconds"] is None  # no samples asked for: null, not 0
    assert not (out / "latency.png").exists()
    wait_until(lambda: _in_flight(url) == 0, timeout_s=60)


def _num_requests(base_url: str) -> float:
    metrics = parse_metrics(httpx.get(f"{base_url}/metrics", timeout=10).text)
    return sum(
        value
        for (name, labels), value in metrics.items()
        if name == "gaudi_serve_requests_total" and ("model", MODEL) in labels
    )


def test_fleet_sample_from_the_server(url):
    health = httpx.get(f"{url}/health", timeout=10).json()
    sample = fleet_sample(3.0, health, httpx.get(f"{url}/metrics", timeout=10).text, MODEL)
    assert (sample.time_s, sample.num_replicas, sample.num_starting) == (3.0, 1, 0)
    assert sample.target_replicas == 1 and len(sample.kv_usage) == 1
    assert 0.0 <= sample.kv_usage[0] <= 1.0


@pytest.mark.parametrize(
    ("extra", "trace", "message"),
    [
        (["--vocab-size", "512", "--model", "nope"], TRACE, "--model 'nope' is not served"),
        (
            ["--vocab-size", "512"],
            [TraceRequest(0.0, 100, 29)],
            "1 request(s) need more than 'tiny''s max_model_len 128",
        ),
    ],
)
def test_argument_checks_against_the_server(url, tmp_path, capsys, extra, trace, message):
    path = tmp_path / "t.jsonl"
    write_trace(path, trace)
    argv = ["replay", "--trace", str(path), "--url", url, "--model", MODEL, "--out", str(tmp_path)]
    assert main(argv + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_the_server_tells_the_vocabulary_size(url):
    async def card() -> dict:
        async with httpx.AsyncClient() as client:
            return await model_card(client, url, MODEL, 30)

    found = asyncio.run(card())
    assert found["id"] == MODEL and isinstance(found["vocab_size"], int)
    assert found["vocab_size"] > 32  # replay needs no --vocab-size from this server


def test_unreachable_server_and_bad_trace(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text('{"arrival_s": 0}\n')
    argv = ["replay", "--trace", str(path), "--url", "http://127.0.0.1:9", "--model", MODEL]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "--trace: " in capsys.readouterr().err
    write_trace(path, TRACE)
    assert main([*argv, "--out", str(tmp_path), "--vocab-size", "512"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path), "--vocab-size", "20"])
    assert "argument --vocab-size: expected an integer > 32" in capsys.readouterr().err
