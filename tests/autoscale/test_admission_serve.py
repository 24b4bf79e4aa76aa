"""Admission control, scale from zero and the autoscaler's metrics on a real Serve app.

One app, three tiny models on CPU:
- busy: one replica, serve.max_queue_wait_s tiny: a burst past its batch is refused with
  429 + Retry-After before any work is spent, and every admitted request completes;
- cold: min_replicas 0, starting at zero: a request is held until the first replica is
  warm and answered;
- never: min_replicas 0 and a cold-start timeout shorter than any start-up: 503 with
  Retry-After (and a client that gives up while held is counted out of the in-flight
  gauge).
/metrics counts the refusals and shows the SLO autoscaler's last decision."""

from __future__ import annotations

import threading

import httpx

from tests.deployments.serve_fixtures import model_entry, parse_metrics, running_app, wait_until

BURST = 10  # over twice the engine's max_num_seqs (4): the rows cannot all be free soon
BODY = {"prompt": "def fibonacci(n):", "max_tokens": 48, "ignore_eos": True}


def _complete(base_url: str, model: str, timeout_s: float = 300) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/completions", json={**BODY, "model": model}, timeout=timeout_s
    )


def _burst(base_url: str, model: str, n: int) -> list[httpx.Response]:
    responses: list[httpx.Response | None] = [None] * n
    start = threading.Barrier(n)

    def send(i: int) -> None:
        start.wait()
        responses[i] = _complete(base_url, model)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert all(r is not None for r in responses), "a request of the burst never returned"
    return responses


def test_admission_scale_from_zero_and_autoscaler_metrics(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model = tiny_model_dir("llama")
    zero = {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}
    entries = [
        model_entry("busy", model, num_replicas=1, max_queue_wait_s=0.001),
        model_entry("cold", model, autoscaling=zero, cold_start_timeout_s=600),
        model_entry("never", model, autoscaling=zero, cold_start_timeout_s=0.5),
    ]
    with running_app(entries, num_cpus=8) as base_url:
        # -- admission -------------------------------------------------------------------
        for _ in range(3):  # the router learns the replica's step times from these
            assert _complete(base_url, "busy").status_code == 200
        responses = _burst(base_url, "busy", BURST)
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses
        for response in responses:
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
                error = response.json()["error"]
                assert "max_queue_wait_s" in error["message"]
            else:
                assert response.json()["usage"]["completion_tokens"] == BODY["max_tokens"]
        num_refused = statuses.count(429)

        # -- scale from zero: a client gone while held is counted out; refused after the
        # timeout; then held and answered -------------------------------------------------
        try:
            _complete(base_url, "never", timeout_s=0.2)
            raise AssertionError("expected the client to time out while the request is held")
        except httpx.TimeoutException:
            pass
        refused = _complete(base_url, "never")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "cold_start_timeout_s" in refused.json()["error"]["message"]
        held = _complete(base_url, "cold", timeout_s=600)
        assert held.status_code == 200, held.text
        assert held.json()["usage"]["completion_tokens"] == BODY["max_tokens"]

        # -- metrics ---------------------------------------------------------------------
        def scraped():
            metrics = parse_metrics(httpx.get(f"{base_url}/metrics", timeout=30).text)
            key = ("gaudi_serve_autoscaler_desired_replicas", frozenset({("model", "cold")}))
            return metrics if key in metrics else None

        metrics = wait_until(scraped, timeout_s=120, interval_s=1.0)
        rejected = ("gaudi_serve_admission_rejected_total", frozenset({("model", "busy")}))
        assert metrics[rejected] == num_refused
        never = frozenset({("model", "never")})
        assert metrics[("gaudi_serve_requests_in_flight", never)] == 0  # the abandoned one too
        abandoned = frozenset({("model", "never"), ("route", "/v1/completions"), ("status", "499")})
        assert metrics[("gaudi_serve_requests_total", abandoned)] == 1
        cold = frozenset({("model", "cold")})
        assert metrics[("gaudi_serve_autoscaler_desired_replicas", cold)] >= 1
        reasons = [
            dict(labels)["reason"]
            for (name, labels), _ in metrics.items()
            if name == "gaudi_serve_autoscaler_decision" and ("model", "cold") in labels
        ]
        assert len(reasons) == 1 and reasons[0]
