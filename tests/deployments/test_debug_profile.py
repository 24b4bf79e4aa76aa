"""/debug/profile: the query checks; a replica's engine profiled while it serves, an idle
one answering at its deadline, one capture at a time; and the route on a real Serve app
with a tp_size 2 model (one trace and report per rank, all-reduces in the communication
share) next to a model that does not enable it (404)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest

from deployments.config import parse_config
from deployments.debug_profile import (
    MAX_STEPS,
    ProfilingDisabledError,
    parse_query,
    profile_replica,
)
from deployments.protocol import ApiError
from engine import AsyncEngine, EngineConfig, SamplingParams
from engine.profiling.classify import SHARE_CATEGORIES
from engine.profiling.session import ProfileBusyError
from tests.conftest import assert_engine_idle
from tests.deployments.serve_fixtures import TEST_ENGINE, model_entry, running_app, wait_until

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


# -- the query ----------------------------------------------------------------------------
def test_query_defaults():
    query = parse_query({"model": "m", "steps": "8"})
    assert (query.model, query.num_steps, query.modules) == ("m", 8, True)
    assert parse_query({"steps": str(MAX_STEPS), "modules": "false"}).modules is False


@pytest.mark.parametrize(
    ("params", "field", "allowed"),
    [
        ({}, "steps", "1..1000"),
        ({"steps": "0"}, "steps", "1..1000"),
        ({"steps": "1001"}, "steps", "1..1000"),
        ({"steps": "two"}, "steps", "1..1000"),
        ({"steps": "2.5"}, "steps", "1..1000"),
        ({"steps": "2", "timeout_s": "0"}, "timeout_s", "(0, 600]"),
        ({"steps": "2", "timeout_s": "soon"}, "timeout_s", "(0, 600]"),
        ({"steps": "2", "modules": "maybe"}, "modules", "'true'"),
    ],
)
def test_bad_query_is_400_naming_the_field(params, field, allowed):
    with pytest.raises(ApiError) as err:
        parse_query(params)
    assert err.value.status == 400 and err.value.param == field
    assert field in err.value.message and allowed in err.value.message


# -- a replica's engine (tp_size 1, no Serve) -----------------------------------------------
def served_model(model_dir: Path, enabled: bool = True):
    entry = model_entry("m", model_dir, debug_profile=enabled)
    return parse_config({"models": [entry]}).models[0]


@pytest.fixture
def engine(tiny_model_dir):
    limits = {k: v for k, v in TEST_ENGINE.items() if k != "kv_cache_tokens"}
    config = EngineConfig(
        model=str(tiny_model_dir("llama")), device="cpu", dtype="float32", **limits
    )
    engine = AsyncEngine(config)
    yield engine
    assert_engine_idle(engine.engine)
    engine.shutdown()


def test_replica_profiles_its_next_steps_while_serving(engine, tiny_model_dir, tmp_path):
    model = served_model(tiny_model_dir("llama"))
    executor = engine.engine.executor

    async def generate(i: int) -> int:
        num_tokens = 0
        async for delta in engine.generate([5 + i, 6, 7, 8], GREEDY, f"r{i}"):
            num_tokens += len(delta.token_ids)
        return num_tokens

    async def scenario():
        requests = [asyncio.create_task(generate(i)) for i in range(3)]
        answer = await profile_replica(model, executor, 4, 60.0, replica_id="r", out_dir=tmp_path)
        return answer, await asyncio.gather(*requests)

    answer, num_tokens = asyncio.run(scenario())
    assert num_tokens == [GREEDY.max_tokens] * 3  # the requests in flight went on
    assert answer["is_complete"] and answer["num_steps"] == 4
    (rank,) = answer["ranks"]
    assert rank["trace"] == str(tmp_path / "trace.rank0.json")
    assert json.loads(Path(rank["report_file"]).read_text()) == rank["report"]
    report = rank["report"]
    assert (report["num_steps"], report["tp_rank"], report["tp_size"]) == (4, 0, 1)
    for step in report["steps"]:
        assert set(step["shares_ms"]) == set(SHARE_CATEGORIES)
        assert sum(step["shares_ms"].values()) == pytest.approx(step["wall_ms"], rel=0.05)
    assert executor.num_profiled_steps == 0  # the capture is over


def test_idle_replica_answers_at_the_deadline(engine, tiny_model_dir, tmp_path):
    model = served_model(tiny_model_dir("llama"))
    executor = engine.engine.executor
    answer = asyncio.run(profile_replica(model, executor, 3, 0.2, replica_id="r", out_dir=tmp_path))
    assert not answer["is_complete"] and answer["num_steps"] == 0
    assert "captured 0 of 3 engine steps within timeout_s 0.2" in answer["message"]
    assert answer["ranks"] == [
        {"tp_rank": 0, "num_steps": 0, "trace": None, "report_file": None, "report": None}
    ]
    assert not list(tmp_path.iterdir())


def test_one_capture_at_a_time_and_only_when_enabled(engine, tiny_model_dir, tmp_path):
    executor = engine.engine.executor
    executor.start_profile(str(tmp_path), 2)
    with pytest.raises(ProfileBusyError, match="already profiling"):
        asyncio.run(
            profile_replica(served_model(tiny_model_dir("llama")), executor, 1, 1.0, replica_id="r")
        )
    assert executor.stop_profile()[0].num_steps == 0
    disabled = served_model(tiny_model_dir("llama"), enabled=False)
    with pytest.raises(ProfilingDisabledError, match=r"serve\.debug_profile: true"):
        asyncio.run(profile_replica(disabled, executor, 1, 1.0, replica_id="r"))


# -- the route on a real Serve app ----------------------------------------------------------
def test_route_profiles_every_rank_of_a_tp2_replica(tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    models = [
        {**model_entry("tp2", model_dir, debug_profile=True), "tp_size": 2},
        model_entry("plain", model_dir),
    ]
    with running_app(models, num_cpus=6) as url:
        profile_url = f"{url}/debug/profile"
        # off unless enabled; unknown models and bad steps as on the other routes
        r = httpx.get(profile_url, params={"model": "plain", "steps": 2}, timeout=60)
        assert r.status_code == 404 and "serve.debug_profile: true" in r.text
        r = httpx.get(profile_url, params={"model": "nope", "steps": 2}, timeout=60)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = httpx.post(profile_url, params={"model": "tp2", "steps": 0}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "steps"

        # an idle replica waits for steps: meanwhile a second capture is refused
        answers: list[httpx.Response] = []
        params = {"model": "tp2", "steps": 3, "timeout_s": 300}
        first = threading.Thread(target=lambda: answers.append(accepted(profile_url, params)))
        first.start()
        quick = {"model": "tp2", "steps": 1, "timeout_s": 1}
        wait_until(lambda: httpx.get(profile_url, params=quick, timeout=60).status_code == 409)
        # traffic while it runs: served as usual, and its steps are the ones profiled
        body = {"model": "tp2", "prompt": "def f(x):", "max_tokens": 8, "ignore_eos": True}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
        first.join(timeout=300)
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        answer = answer.json()
        assert answer["is_complete"] and answer["num_steps"] == 3
        assert [rank["tp_rank"] for rank in answer["ranks"]] == [0, 1]
        for rank in answer["ranks"]:
            check_rank_files(rank)


def accepted(url: str, params: dict) -> httpx.Response:
    """The answer to a capture, asked again while another one runs (409)."""
    while (r := httpx.post(url, params=params, timeout=600)).status_code == 409:
        continue
    return r


def check_rank_files(rank: dict) -> None:
    """A rank's trace parses as Chrome/Perfetto JSON with the profiled steps, and its
    report (also on disk) splits each step's time, all-reduces included."""
    trace = json.loads(Path(rank["trace"]).read_text())
    complete = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    assert complete and all(isinstance(e["name"], str) and e["dur"] >= 0 for e in complete)
    steps = [e["name"] for e in complete if e["name"].startswith("step ")]
    assert len(steps) == rank["num_steps"] == 3
    report = rank["report"]
    assert json.loads(Path(rank["report_file"]).read_text()) == report
    assert (report["tp_rank"], report["tp_size"], report["num_steps"]) == (rank["tp_rank"], 2, 3)
    for step in report["steps"]:
        assert sum(step["shares_ms"].values()) == pytest.approx(step["wall_ms"], rel=0.05)
        assert step["shares_ms"]["communication"] > 0  # the row-parallel all-reduces
