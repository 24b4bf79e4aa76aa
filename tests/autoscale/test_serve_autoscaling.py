"""The SLO policy under Ray Serve: the adapter over a real AutoscalingContext, and a real
Serve app on CPU that scales 1 -> 2 -> 1 under a load burst without losing a request."""

from __future__ import annotations

import threading

import httpx
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.config import AutoscalingContext

from autoscale.serve_autoscaling import (
    DECISION_KEY,
    STATE_KEY,
    SloAutoscalingPolicy,
    decode_replica_stats,
    encode_replica_stats,
    policy_kwargs,
)
from autoscale.slo_config import SloPolicyConfig
from autoscale.step_time import StepTimePrior
from tests.deployments.serve_fixtures import model_entry, running_app, wait_until

DEPLOYMENT = DeploymentID(name="tiny", app_name="gaudi-serve")
FIT = StepTimePrior(0.0, 1e-4, 0.01, 0.001)  # 800 output tokens/s per replica at 50 ms TPOT


def _stats(at: float, rate: float) -> dict[str, float]:
    return encode_replica_stats(
        prompt_tokens_total=int(2000 * at),
        generated_tokens_total=int(rate * at),
        num_queued_prompt_tokens=0,
        num_waiting=0,
        num_running=4,
        kv_usage=0.1,
        ttft_p95_s=None,
        tpot_p95_s=0.02,
        step_time=FIT,
        startup_s=5.0,
    )


def _context(replicas, reports, target: int, now: float, state: dict) -> AutoscalingContext:
    raw: dict = {}
    for replica, (at, values) in zip(replicas, reports, strict=True):
        for key, value in values.items():
            raw.setdefault(key, {})[replica] = [TimeStampedValue(at, value)]
    return AutoscalingContext(
        deployment_id=DEPLOYMENT,
        deployment_name=DEPLOYMENT.name,
        app_name=DEPLOYMENT.app_name,
        current_num_replicas=len(replicas),
        target_num_replicas=target,
        running_replicas=replicas,
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics={},
        raw_metrics=raw,
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=3,
        policy_state=state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=now,
        config=None,
    )


def test_replica_stats_round_trip_through_floats():
    values = _stats(10.0, 480)
    assert all(isinstance(v, float) for v in values.values())
    assert "ttft_p95_s" not in values  # unknown: left out, never NaN
    metrics = decode_replica_stats("r", 10.0, values)
    assert metrics.step_time == FIT and metrics.prompt_tokens_total == 20_000
    assert metrics.ttft_p95_s is None and metrics.tpot_p95_s == 0.02 and metrics.num_running == 4


def test_policy_scales_up_on_token_demand_and_clamps_to_serves_bounds():
    config = SloPolicyConfig(ttft_s=1.0, tpot_s=0.05, max_replicas=8, rate_window_s=10.0)
    policy = SloAutoscalingPolicy(**policy_kwargs(config))  # as Serve builds it: from JSON
    assert policy.config == config
    replicas = [ReplicaID(name, DEPLOYMENT) for name in ("a", "b")]
    first = _context(replicas, [(0.0, _stats(0.0, 480))] * 2, 2, 0.0, {})
    num_replicas, state = policy(first)
    assert num_replicas == 2 and state[DECISION_KEY]["reason"] == "scale_down_pending"
    # Each replica generates 720 tokens/s of its 800 at the SLO (plus prefill): 3 wanted.
    busy = [(10.0, _stats(10.0, 720))] * 2
    num_replicas, state = policy(_context(replicas, busy, 2, 10.0, state))
    assert state[DECISION_KEY]["reason"] == "capacity"
    assert num_replicas == 3  # Serve's capacity-adjusted max is 3, the policy's 8
    assert state[STATE_KEY].num_serving == 2
    # A replica that has not reported yet counts as starting, not as missing.
    fresh = ReplicaID("c", DEPLOYMENT)
    num_replicas, state = policy(_context([*replicas, fresh], [*busy, (0.0, {})], 3, 11.0, state))
    assert num_replicas == 3 and state[DECISION_KEY]["num_starting"] == 1


PROMPT = "def fibonacci(n):"
BURST_STREAMS = 8  # twice the engine's max_num_seqs: one replica is over its capacity
KEEP_STREAMS = 1  # during the scale-down: well within one replica


class Load:
    """Streams of completions, each thread one request after another while it is allowed
    to (`num_active`); every response recorded."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.num_active = 0
        self.results: list[tuple[int, bool, str]] = []  # (status, saw [DONE], error)
        self.num_started = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, num_streams: int) -> None:
        self.num_active = num_streams
        for index in range(num_streams):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.num_active = 0
        for thread in self._threads:
            thread.join(timeout=600)

    def _run(self, index: int) -> None:
        body = {
            "model": "tiny",
            "prompt": PROMPT,
            "max_tokens": 96,
            "ignore_eos": True,
            "stream": True,
        }
        while index < self.num_active:
            with self._lock:
                self.num_started += 1
            status, done, error = 0, False, ""
            try:
                url = f"{self.base_url}/v1/completions"
                with httpx.stream("POST", url, json=body, timeout=300) as response:
                    status = response.status_code
                    lines = [line for line in response.iter_lines() if line]
                    done = bool(lines) and lines[-1] == "data: [DONE]"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.results.append((status, done, error))


def _replica_states() -> dict[str, int]:
    from ray import serve

    status = serve.status().applications["gaudi-serve"].deployments["tiny"]
    return {str(getattr(k, "value", k)): v for k, v in status.replica_states.items()}


def _num_running(expected: int) -> bool:
    states = _replica_states()
    return states.get("RUNNING", 0) == expected and sum(states.values()) == expected


def test_serve_scales_1_to_2_to_1_under_a_burst_without_losing_a_request(
    tiny_model_dir, monkeypatch
):
    # One torch thread per replica, and logical CPUs for both replicas and the ingress, so
    # a second replica really adds capacity on a 2-core machine.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    scaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "downscale_delay_s": 2.0,
        "demand_window_s": 4.0,
        "forecast_window_s": 4.0,
        "rate_window_s": 2.0,
        "settle_s": 0.0,
    }
    entry = model_entry(
        "tiny",
        tiny_model_dir("llama"),
        autoscaling=scaling,
        slo={"ttft_s": 30.0, "tpot_s": 2.0},  # loose: capacity alone decides here
    )
    with running_app([entry], num_cpus=4) as base_url:
        assert _num_running(1)
        load = Load(base_url)
        try:
            load.start(BURST_STREAMS)
            wait_until(lambda: _num_running(2), timeout_s=600, interval_s=0.5)
            num_before_drop = load.num_started
            load.num_active = KEEP_STREAMS  # the others stop after their current request
            wait_until(lambda: _num_running(1), timeout_s=600, interval_s=0.5)
            # Requests kept coming while the replica was removed; a few more after it.
            num_after_drop = load.num_started
            wait_until(lambda: load.num_started >= num_after_drop + 2, timeout_s=300)
        finally:
            load.stop()
        assert num_after_drop > num_before_drop
        failed = [r for r in load.results if r != (200, True, "")]
        assert not failed, f"{len(failed)} of {len(load.results)} requests failed: {failed[:5]}"
