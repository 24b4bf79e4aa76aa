"""LLMServer: streaming generation through deployment handles, the Python client, Serve's
stats hooks, and health checks that fail for a wedged engine (Serve then replaces the
replica). One Serve app per module: "tiny", plus "wedge" with fast health checks, whose
executor wedges on command (WedgeOnMarker)."""

from __future__ import annotations

import asyncio
import math
import shutil

import pytest
from ray import serve

from autoscale.step_time import DECODE, PREFILL
from deployments.client import LLMClient
from deployments.config import parse_config
from deployments.engine_config import engine_config_for
from deployments.generation import (
    EngineUnavailableError,
    GenerationChunk,
    Handoff,
    InvalidRequestError,
)
from deployments.server import LLMServer
from engine import BLOCK_STORED, SamplingParams
from tests.conftest import assert_engine_idle
from tests.deployments.serve_fixtures import (
    WedgeOnMarker,
    model_entry,
    offline_llm,
    running_app,
    wait_until,
)

APP = "gaudi-serve"
PROMPT = "def scheduler(requests):"
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def wedge(tiny_model_dir, tmp_path_factory) -> WedgeOnMarker:
    """Wedges the "wedge" model's engine on command; it serves a copy of the tiny model, so
    the "tiny" model's engine never looks at the marker."""
    root = tmp_path_factory.mktemp("wedge")
    model_dir = shutil.copytree(tiny_model_dir("llama"), root / "model")
    return WedgeOnMarker(root / "marker", model_dir)


@pytest.fixture(scope="module")
def app(tiny_model_dir, wedge):
    models = [
        model_entry("tiny", tiny_model_dir("llama")),
        model_entry("wedge", wedge.model_dir, health_check_period_s=1, health_check_timeout_s=4),
    ]
    with running_app(models, executor_factory=wedge):
        yield


@pytest.fixture(scope="module")
def offline(tiny_model_dir):
    llm = offline_llm(tiny_model_dir("llama"))
    yield llm
    llm.shutdown()


def run(coro):
    return asyncio.run(coro)


async def collect(handle, *args, **kwargs) -> list[GenerationChunk]:
    return [c async for c in handle.options(stream=True).generate.remote(*args, **kwargs)]


def test_handle_streams_chunks_equal_to_offline(app, offline):
    handle = serve.get_deployment_handle("tiny", APP)
    chunks = run(collect(handle, PROMPT, GREEDY))
    assert "".join(c.text for c in chunks) == offline.generate([PROMPT], GREEDY)[0].text
    assert [c.is_finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].finish_reason == "length" and chunks[-1].num_generated_tokens == 10
    assert sum(len(c.tokens) for c in chunks) == 10
    token_ids = [t.id for c in chunks for t in c.tokens]
    assert token_ids == offline.generate([PROMPT], GREEDY)[0].token_ids


def test_step_stream_carries_a_sessions_chunks_per_step(app, offline):
    """A session's requests send their first chunk and a Handoff on their own stream, the
    rest on the session's step stream, several requests per message; closing a handed-off
    request's own stream still aborts it and frees its blocks. Each message's ReplicaUpdate
    (a snapshot first, then block events) keeps the session's mirror of the replica's
    prefix cache equal to the routing stats' snapshot."""
    handle = serve.get_deployment_handle("tiny", APP)
    expected = offline.generate([PROMPT], GREEDY)[0]
    streaming = handle.options(stream=True)

    async def main():
        steps = streaming.step_stream.remote("s1")
        step_stream_id = await steps.__anext__()
        own = {
            f"s1-{i}": streaming.generate.remote(PROMPT, GREEDY, f"s1-{i}", session="s1")
            for i in range(3)
        }
        chunks = {rid: [await gen.__anext__()] for rid, gen in own.items()}
        assert [await gen.__anext__() for gen in own.values()] == [Handoff(step_stream_id)] * 3
        num_messages, updates = 0, []
        while not all(c[-1].is_finished for c in chunks.values()):
            num_messages += 1
            batch, update = await steps.__anext__()
            for chunk in batch:
                chunks[chunk.request_id].append(chunk)
            updates.append(update)
        assert updates[0].snapshot is not None  # a new session starts from a snapshot
        mirrored = mirror(u for u in updates if u is not None)
        routing = (await handle.record_routing_stats.remote())["kv_routing"]
        assert mirrored == set(routing.snapshot) and mirrored  # the prompt's blocks are in
        assert {u.replica for u in updates if u is not None} == {routing.replica}
        for gen in own.values():  # each own stream ends once its request has finished
            with pytest.raises(StopAsyncIteration):
                await gen.__anext__()
        long = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)
        doomed = streaming.generate.remote(PROMPT, long, "s1-doomed", session="s1")
        await doomed.__anext__()
        assert await doomed.__anext__() == Handoff(step_stream_id)
        doomed.cancel()
        steps.cancel()
        return chunks, num_messages

    chunks, num_messages = run(main())
    for request_chunks in chunks.values():
        assert "".join(c.text for c in request_chunks) == expected.text
        assert [t.id for c in request_chunks for t in c.tokens] == expected.token_ids
        assert request_chunks[-1].num_generated_tokens == 10
    assert num_messages < sum(len(c) - 1 for c in chunks.values())
    wait_until(lambda: handle.stats.remote().result()["num_running"] == 0)
    stats = handle.stats.remote().result()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def mirror(updates) -> set[int]:
    """The cached block hashes a router following `updates` holds."""
    hashes: set[int] = set()
    next_seq = 0
    for update in updates:
        if update.snapshot is not None:
            hashes, next_seq = set(update.snapshot), update.next_seq
            continue
        assert [e.seq for e in update.events] == list(range(next_seq, update.next_seq))
        for event in update.events:
            if event.kind == BLOCK_STORED:
                hashes.add(event.block_hash)
            else:
                hashes.discard(event.block_hash)
        next_seq = update.next_seq
    return hashes


def test_handle_logprobs_tokenize_and_model_info(app, offline):
    handle = serve.get_deployment_handle("tiny", APP)
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=3)
    chunks = run(collect(handle, PROMPT, params))
    tokens = [t for c in chunks for t in c.tokens]
    assert all(t.logprob <= 0 and len(t.top) == 3 for t in tokens)
    assert all(t.logprob == pytest.approx(max(x.logprob for x in t.top)) for t in tokens)

    assert handle.tokenize.remote(PROMPT).result() == offline.tokenizer.encode(PROMPT)
    info = handle.model_info.remote().result()
    assert (info.name, info.device, info.max_model_len, info.dtype) == (
        "tiny",
        "cpu",
        128,
        "float32",
    )
    assert not info.has_chat_template


def test_bad_input_raises_invalid_request_error(app):
    handle = serve.get_deployment_handle("tiny", APP)
    with pytest.raises(InvalidRequestError) as info:
        run(collect(handle, "x " * 400, GREEDY))
    assert info.value.param == "prompt" and "at most 127" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        run(collect(handle, None, GREEDY, messages=[{"role": "user", "content": "hi"}]))
    assert info.value.param == "messages"


def test_stats_hooks_follow_serves_contract(app):
    handle = serve.get_deployment_handle("tiny", APP)
    run(collect(handle, PROMPT, GREEDY))
    autoscaling = handle.record_autoscaling_stats.remote().result()
    # Serve accepts only dict[str, int | float] from record_autoscaling_stats.
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in autoscaling.values())
    for field in ("num_waiting", "num_running", "kv_usage", "num_bucket_misses"):
        assert field in autoscaling
    assert autoscaling["num_running"] == 0 and autoscaling["num_generated_tokens"] >= 10
    routing = handle.record_routing_stats.remote().result()
    assert routing["model"] == "tiny" and routing["replica_id"]
    assert routing["generation_tokens_per_s"] >= 0
    kv_routing = routing["kv_routing"]  # a ReplicaUpdate snapshot of the replica
    assert kv_routing.replica == routing["replica_id"] and kv_routing.events == ()
    assert isinstance(kv_routing.snapshot, tuple) and kv_routing.steps
    assert {s.kind for s in kv_routing.steps} == {PREFILL, DECODE}


def test_client_complete_stream_and_early_exit(app, offline):
    expected = offline.generate([PROMPT], GREEDY)[0].text

    async def main():
        client = LLMClient(APP, model="tiny")
        assert await client.models() == ["tiny", "wedge"]
        text = await client.complete(PROMPT, max_tokens=10, temperature=0, ignore_eos=True)
        pieces = [
            p async for p in client.stream(PROMPT, max_tokens=10, temperature=0, ignore_eos=True)
        ]
        async for _ in client.chunks(PROMPT, max_tokens=100, ignore_eos=True):
            break  # leaving early cancels the request
        return text, "".join(pieces)

    assert run(main()) == (expected, expected)
    handle = serve.get_deployment_handle("tiny", APP)

    def is_idle():
        stats = handle.stats.remote().result()
        return stats["num_running"] == 0 and stats["num_free_blocks"] == stats["num_total_blocks"]

    from tests.deployments.serve_fixtures import wait_until

    wait_until(is_idle, timeout_s=30)


def test_wedged_replica_fails_health_checks_and_is_replaced(app, wedge):
    handle = serve.get_deployment_handle("wedge", APP)
    wedged = handle.replica_id.remote().result()
    wedge.wedge()  # the replica's next step (its health probe's) blocks in execute

    from tests.deployments.serve_fixtures import wait_until

    def replaced():
        try:
            return handle.replica_id.remote().result(timeout_s=5) != wedged
        except Exception:
            return False

    try:
        wait_until(wedge.is_wedged, timeout_s=30)
        wait_until(replaced, timeout_s=90, interval_s=1)
    finally:
        wedge.release()  # the replaced replica's stuck step ends, so it shuts down at once
    chunks = run(collect(handle, PROMPT, GREEDY))
    assert chunks[-1].num_generated_tokens == 10


def test_check_health_fails_for_a_wedged_engine(tiny_model_dir, tmp_path):
    """The check itself, on an LLMServer built without Serve (the class is plain Python)."""
    config = parse_config(
        {"models": [model_entry("t", tiny_model_dir("llama"), health_check_timeout_s=2)]}
    )
    wedge = WedgeOnMarker(tmp_path / "marker")
    server = LLMServer.func_or_class(config.models[0], "cpu", wedge)
    try:
        run(server.check_health())  # healthy: the probe generates one token
        wedge.wedge()
        with pytest.raises(EngineUnavailableError, match="no engine step"):
            run(server.check_health())
        assert wedge.is_wedged()  # the probe's step is the one blocked in execute
    finally:
        wedge.release()
        server.__del__()
    assert_engine_idle(server.engine.engine)


def test_engine_config_for_maps_buckets_and_speculation(tiny_model_dir):
    entry = model_entry("t", tiny_model_dir("llama"))
    entry["engine"]["buckets"] = {
        "decode_batch_sizes": [1, 3, 4],
        "strategy": "linear",
        "prefill_lengths": {"min": 16, "max": 128, "step": 16},
    }
    entry["engine"]["strict_shapes"] = True
    entry["speculative"] = {"method": "ngram", "num_speculative_tokens": 3}
    config = engine_config_for(parse_config({"models": [entry]}).models[0], "cpu")
    assert config.strict_shapes and config.max_model_len == 128
    assert config.buckets.decode_batch_sizes == (1, 3, 4)
    assert config.buckets.strategy == "linear"
    assert (config.speculative.method, config.speculative.num_speculative_tokens) == ("ngram", 3)
    plain = engine_config_for(
        parse_config({"models": [model_entry("t", entry["path"])]}).models[0], "cpu"
    )
    assert plain.buckets is None and plain.kv_cache_tokens == 2048


@pytest.mark.parametrize(
    ("env_ms", "config_ms"),
    [("60000", None), ("0", 60000)],
    ids=["GAUDI_SERVE_STREAM_INTERVAL_MS", "config-wins-over-env"],
)
def test_stream_interval_sends_fewer_bigger_chunks(env_ms, config_ms, tiny_model_dir, monkeypatch):
    """With a stream interval (serve.stream_interval_ms, else GAUDI_SERVE_STREAM_INTERVAL_MS),
    held-back outputs ride on the next chunk: same text and tokens, fewer chunks; the first
    and the last chunk are never held."""
    monkeypatch.setenv("GAUDI_SERVE_STREAM_INTERVAL_MS", env_ms)
    entry = model_entry("t", tiny_model_dir("llama"), stream_interval_ms=config_ms)
    config = parse_config({"models": [entry]})
    server = LLMServer.func_or_class(config.models[0], "cpu")
    try:

        async def main():
            return [c async for c in server.generate(PROMPT, GREEDY)]

        chunks = run(main())
    finally:
        server.__del__()
    assert len(chunks) == 2 and chunks[-1].is_finished
    assert [len(c.tokens) for c in chunks] == [1, 9]
    llm = offline_llm(tiny_model_dir("llama"))
    expected = llm.generate([PROMPT], GREEDY)[0]
    llm.shutdown()
    assert "".join(c.text for c in chunks) == expected.text
    assert [t.id for c in chunks for t in c.tokens] == expected.token_ids
