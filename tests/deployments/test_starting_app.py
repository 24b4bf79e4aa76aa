"""An app with a replica that can never start: one model, two replicas, and Ray CPUs for
one. /health and /metrics answer from what the replicas last said, listing the pending
replica as starting instead of waiting on it, and README's Python handle example runs as
written against the app (named as `gaudi-serve up` names it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deployments.replica_stats import STATS_TIMEOUT_S
from engine import SamplingParams
from tests.deployments.serve_fixtures import (
    engine_stat,
    model_entry,
    offline_llm,
    parse_metrics,
    running_app,
    wait_until,
)

REPO = Path(__file__).parents[2]
README_MARKER = "<!-- readme-example: handle-client -->"
# A hang guard, not a speed test: /health used to wait STATS_TIMEOUT_S on a pending replica.
HANG_GUARD_S = STATS_TIMEOUT_S / 2
STARTUP_ANSWERS: list[dict] = []  # /health bodies seen while the app came up


def health(base_url: str) -> httpx.Response:
    return httpx.get(f"{base_url}/health", timeout=HANG_GUARD_S)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def base_url(model_dir):
    # Each replica asks Ray for 1 CPU and the ingress for none: the second replica waits
    # for room forever.
    models = [model_entry("tiny", model_dir, num_replicas=2)]
    with running_app(models, num_cpus=1, wait_until_running=False) as url:

        def one_replica_serves():
            try:
                body = health(url).json()
                STARTUP_ANSWERS.append(body)
                return body["models"]["tiny"]
            except (httpx.HTTPError, ValueError, KeyError):  # Serve's proxy is not up yet
                return False

        wait_until(one_replica_serves, timeout_s=180, interval_s=1.0)
        yield url


def test_health_lists_the_pending_replica_as_starting_without_waiting_on_it(base_url):
    for _ in range(3):  # every answer comes without waiting on the pending replica
        response = health(base_url)
        assert response.status_code == 200
        body = response.json()
        assert body["healthy"] is True and body["models"] == {"tiny": True}
        assert sorted(body["replicas"]["tiny"].values()) == ["healthy", "starting"]


def test_replicas_loading_or_waiting_read_as_starting_not_unhealthy(base_url):
    # While a replica loads, Serve refuses the ingress's stats call (its constructor has not
    # finished): that is starting, not ill health.
    ours = [body for body in STARTUP_ANSWERS if "replicas" in body]
    for body in ours:
        assert set(body["replicas"]["tiny"].values()) <= {"starting", "healthy"}, body
        assert body["healthy"] == ("healthy" in body["replicas"]["tiny"].values())


def test_metrics_carry_the_running_replicas_stats_only(base_url):
    response = httpx.get(f"{base_url}/metrics", timeout=HANG_GUARD_S)
    replicas = health(base_url).json()["replicas"]["tiny"]
    running = [replica for replica, state in replicas.items() if state == "healthy"]
    assert list(engine_stat(parse_metrics(response.text), "kv_usage", "tiny")) == running


def readme_example() -> str:
    """The Python block right after README_MARKER."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(re.escape(README_MARKER) + r"\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README.md has no ```python block after {README_MARKER}"
    return match.group(1)


def test_readme_handle_example_runs_as_written(base_url, model_dir):
    import ray

    # The script's ray.init(address="auto") joins this test's cluster through RAY_ADDRESS.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    result = subprocess.run(
        [sys.executable, "-c", readme_example()],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    llm = offline_llm(model_dir)
    try:
        params = SamplingParams(max_tokens=32, temperature=0)
        expected = llm.generate(["def fib(n):"], params)[0].text
    finally:
        llm.shutdown()
    assert result.stdout.startswith(f"['tiny']\n{expected}\n"), result.stdout


def test_client_names_the_running_apps_when_the_named_one_is_missing(base_url):
    from deployments.client import AppNotFoundError, LLMClient

    assert LLMClient().app_name == "gaudi-serve"
    with pytest.raises(AppNotFoundError, match=r"'default' is not running .*: 'gaudi-serve'$"):
        LLMClient("default")
