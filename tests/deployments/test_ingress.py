"""The HTTP front door over real HTTP on 127.0.0.1: a real Serve app with two tiny models
("tiny": 2 replicas, no chat template; "chat": a chat template and a small request
queue), the official `openai` and `text_generation` clients, and raw requests for every
kind of bad input."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json

import httpx
import openai
import pytest
from ray import serve
from text_generation import Client as TgiClient
from text_generation.errors import ValidationError as TgiValidationError

from autoscale import feedback
from deployments.config import APP_NAME
from engine import SamplingParams, load_prompt_encoder
from tests.deployments.serve_fixtures import (
    engine_stat,
    model_entry,
    offline_llm,
    parse_metrics,
    running_app,
    wait_until,
    with_chat_template,
)

PROMPT = "def scheduler(requests):"
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
IGNORE = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory):
    tiny = tiny_model_dir("llama")
    chat = with_chat_template(tiny_model_dir("qwen2"), tmp_path_factory.mktemp("c") / "chat")
    return {"tiny": tiny, "chat": chat}


@pytest.fixture(scope="module")
def base_url(model_dirs):
    models = [
        model_entry("tiny", model_dirs["tiny"], num_replicas=2),
        model_entry("chat", model_dirs["chat"], max_ongoing_requests=2, max_queued_requests=1),
    ]
    with running_app(models) as url:
        yield url


@pytest.fixture(scope="module")
def offline(model_dirs):
    llms = {name: offline_llm(path) for name, path in model_dirs.items()}
    yield llms
    for llm in llms.values():
        llm.shutdown()


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def offline_text(llm, prompt, max_tokens: int) -> str:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return llm.generate([prompt], params)[0].text


# -- OpenAI ------------------------------------------------------------------------------
def test_completion_equals_offline_engine(client, offline):
    response = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, **GREEDY)
    assert response.choices[0].text == offline_text(offline["tiny"], PROMPT, 12)
    assert response.choices[0].finish_reason == "length"
    num_prompt = len(offline["tiny"].tokenizer.encode(PROMPT))
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (num_prompt, 12)
    assert response.usage.total_tokens == num_prompt + 12


def test_streamed_completion_matches_and_reports_usage(client, offline):
    stream = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == offline_text(offline["tiny"], PROMPT, 10)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_sse_stream_ends_with_done(base_url):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)


def test_n_samples_of_several_prompts(client, offline):
    prompts = [PROMPT, "import os\n"]
    response = client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=6, **GREEDY)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    for prompt_index, prompt in enumerate(prompts):
        expected = offline_text(offline["tiny"], prompt, 6)
        assert [c.text for c in response.choices[prompt_index * 2 : prompt_index * 2 + 2]] == [
            expected,
            expected,
        ]
    num_prompt = sum(len(offline["tiny"].tokenizer.encode(p)) for p in prompts)
    assert response.usage.prompt_tokens == num_prompt  # once per prompt, not per sample
    assert response.usage.completion_tokens == 4 * 6


def test_seed_makes_sampling_reproducible(client):
    def sample(seed):
        r = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=seed, n=2
        )
        return [c.text for c in r.choices]

    first = sample(7)
    assert sample(7) == first
    assert first[0] != first[1]  # sample i is seeded seed + i


def test_stop_string_and_logprobs(client, offline):
    full = offline_text(offline["tiny"], PROMPT, 12)
    stop = full[4:7]
    response = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=12, stop=[stop], logprobs=2, **GREEDY
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == full[: full.index(stop)]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset)
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)


def test_chat_completion_uses_the_chat_template(client, offline):
    messages = [{"role": "user", "content": "hello"}]
    response = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=8, logprobs=True, top_logprobs=2, **GREEDY
    )
    llm = offline["chat"]
    prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = llm.tokenizer.encode(prompt, add_special_tokens=False)
    assert response.choices[0].message.content == offline_text(llm, prompt_ids, 8)
    assert response.choices[0].message.role == "assistant"
    assert len(response.choices[0].logprobs.content) == 8
    assert response.usage.prompt_tokens == len(prompt_ids)

    stream = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=8, stream=True, **GREEDY
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        response.choices[0].message.content
    )


def test_chat_as_token_ids_is_the_chat_completion(client, model_dirs):
    """The ingress sends a chat as the ids of its template: the same ids given to
    /v1/completions are the same request."""
    messages = [{"role": "user", "content": "hello"}]
    ids = load_prompt_encoder(model_dirs["chat"]).encode_chat(messages)
    chat = client.chat.completions.create(model="chat", messages=messages, max_tokens=6, **GREEDY)
    completion = client.completions.create(model="chat", prompt=ids, max_tokens=6, **GREEDY)
    assert completion.choices[0].text == chat.choices[0].message.content
    assert completion.usage.prompt_tokens == chat.usage.prompt_tokens == len(ids)


class FirstTokens:
    """A stand-in KV-aware router of this process: records its first-token feedback."""

    def __init__(self):
        self.seen: list[tuple[str, float]] = []

    def on_first_token(self, request_id: str, ttft_s: float) -> None:
        self.seen.append((request_id, ttft_s))

    def on_replica_update(self, update) -> None:
        pass


def test_streams_report_their_first_token_to_the_routers(base_url, model_dirs, offline):
    """Both the ingress's SampleStream and LLMClient (here in this driver process) tell the
    model's routers when a request's first token came and how long it took."""
    from deployments.client import LLMClient
    from deployments.handles import SampleStream

    routers = FirstTokens()
    feedback.register("chat", routers)
    handle = serve.get_deployment_handle("chat", APP_NAME)
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    messages = [{"role": "user", "content": "hello"}]

    async def main():
        stream = SampleStream(handle, 0, prompt=[5, 6, 7], params=params, request_id="s-1")
        await stream.open()
        chunks = [chunk async for chunk in stream.chunks()]
        stream.close()
        text = await LLMClient(APP_NAME, model="chat").complete(
            messages=messages, max_tokens=6, temperature=0, ignore_eos=True
        )
        return chunks, text

    chunks, text = asyncio.run(main())
    assert chunks[-1].num_generated_tokens == 3 and chunks[-1].num_prompt_tokens == 3
    ids = load_prompt_encoder(model_dirs["chat"]).encode_chat(messages)
    assert text == offline_text(offline["chat"], ids, 6)
    assert [rid for rid, _ in routers.seen[:1]] == ["s-1"]
    assert len(routers.seen) == 2 and routers.seen[1][0].startswith("client-")
    assert all(ttft_s > 0 for _, ttft_s in routers.seen)


def test_chat_without_a_template_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert "chat template" in info.value.body["message"]
    assert info.value.body["param"] == "messages"


def test_models_and_unknown_model(client, base_url):
    assert sorted(m.id for m in client.models.list()) == ["chat", "tiny"]
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert info.value.body["code"] == "model_not_found"
    assert "chat" in info.value.body["message"] and "tiny" in info.value.body["message"]
    # With two models served, the model field is required.
    r = httpx.post(f"{base_url}/v1/completions", json={"prompt": "x"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


# -- TGI ---------------------------------------------------------------------------------
def test_tgi_client_generate_and_stream(base_url, offline):
    tgi = TgiClient(base_url, timeout=60)
    # TGI requests go to the default model (the first). The TGI client cannot ask to
    # ignore EOS: compare against greedy with EOS honoured.
    params = SamplingParams(max_tokens=8, temperature=0)
    expected = offline["tiny"].generate([PROMPT], params)[0].text
    response = tgi.generate(PROMPT, max_new_tokens=8)
    assert response.generated_text == expected
    assert response.details.generated_tokens == len(response.details.tokens)
    assert all(t.logprob is not None for t in response.details.tokens)

    events = list(tgi.generate_stream(PROMPT, max_new_tokens=8))
    assert "".join(e.token.text for e in events) == expected
    assert events[-1].generated_text == expected
    assert events[-1].details.generated_tokens == len(events)
    assert all(e.generated_text is None for e in events[:-1])


def test_tgi_routes_and_parameters(base_url, offline):
    greedy = offline_text(offline["tiny"], PROMPT, 5)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5, "return_full_text": True}}
    r = httpx.post(f"{base_url}/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    text = r.json()["generated_text"]
    assert text.startswith(PROMPT) and r.json().get("details") is None
    # `/` with stream false answers a one-element list
    r = httpx.post(f"{base_url}/", json={"inputs": PROMPT, "stream": False}, timeout=60)
    assert isinstance(r.json(), list) and len(r.json()) == 1
    # truncate keeps the last prompt tokens: same as prompting with them
    ids = offline["tiny"].tokenizer.encode(PROMPT)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 5, "truncate": 3}}
    params = SamplingParams(max_tokens=5, temperature=0)
    r = httpx.post(f"{base_url}/generate", json=body, timeout=60)
    assert r.json()["generated_text"] == offline["tiny"].generate([ids[-3:]], params)[0].text
    # another model through the query string
    r = httpx.post(f"{base_url}/generate?model=chat", json={"inputs": PROMPT}, timeout=60)
    assert r.status_code == 200
    info = httpx.get(f"{base_url}/info", timeout=30).json()
    assert info["model_id"] == "tiny" and info["max_total_tokens"] == 128
    assert greedy  # the offline engine ran


def test_tgi_client_reports_validation_errors(base_url):
    tgi = TgiClient(base_url, timeout=60)
    with pytest.raises(TgiValidationError):
        tgi.generate("x" * 2000, max_new_tokens=2)


# -- bad input ---------------------------------------------------------------------------
OPENAI_BAD = [
    ("/v1/completions", b"{not json", None),
    ("/v1/completions", b"[1, 2]", None),
    ("/v1/completions", {"model": "tiny", "prompt": ""}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x " * 400}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": [[]]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "n": 0}, "n"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "top_p": 2}, "top_p"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": 99}, "logprobs"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "stop": [""]}, "stop"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "bogus": 1}, "bogus"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "seed": -1}, "seed"),
    ("/v1/completions", {"model": "tiny", "prompt": [999999]}, "prompt"),
    ("/v1/chat/completions", {"model": "chat", "messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "chat", "messages": [{"role": "x"}]}, "messages"),
]
TGI_BAD = [
    ("/generate", b"{", None),
    ("/generate", {"inputs": ""}, "inputs"),
    ("/generate", {"inputs": "x " * 400}, "prompt"),
    ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 0}}, "max_new_tokens"),
    ("/generate", {"inputs": "x", "parameters": {"temperature": 0}}, "temperature"),
    ("/generate", {"inputs": "x", "parameters": {"truncate": 0}}, "truncate"),
    ("/generate_stream", {"inputs": "x", "parameters": {"top_k": -2}}, "top_k"),
    ("/", {"inputs": "x", "parameters": {"watermark": True}}, "watermark"),
    ("/generate?model=nope", {"inputs": "x"}, "model"),
]


@pytest.mark.parametrize(("route", "body", "param"), OPENAI_BAD)
def test_openai_bad_input_is_a_4xx(base_url, route, body, param):
    r = _post(base_url, route, body)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert param in (error["param"] or "") + error["message"], error


@pytest.mark.parametrize(("route", "body", "param"), TGI_BAD)
def test_tgi_bad_input_is_a_4xx(base_url, route, body, param):
    r = _post(base_url, route, body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error_type"] == "validation"
    if param is not None:
        assert param in r.json()["error"]


def _post(base_url, route, body) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        return httpx.post(f"{base_url}{route}", content=body, headers=headers, timeout=30)
    return httpx.post(f"{base_url}{route}", json=body, timeout=30)


def test_overload_is_503_with_retry_after(base_url):
    # "chat" runs 2 requests per replica and queues 1 more: the rest are turned away.
    body = {
        "model": "chat",
        "prompt": PROMPT,
        "max_tokens": 100,
        "ignore_eos": True,
        "stream": True,
    }

    def call(_):
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as r:
            r.read()
            return r.status_code, r.headers.get("retry-after"), r.text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    rejected = [(s, retry, text) for s, retry, text in results if s != 200]
    assert rejected, "no request was turned away"
    for status, retry_after, text in rejected:
        assert status in (429, 503) and int(retry_after) >= 1
        assert json.loads(text)["error"]["code"] == "overloaded"
    assert any(s == 200 for s, _, _ in results)


# -- streams, replicas, metrics ----------------------------------------------------------
def test_disconnected_stream_frees_its_blocks(base_url):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 120, "ignore_eos": True}
    with httpx.stream(
        "POST", f"{base_url}/v1/completions", json={**body, "stream": True}, timeout=60
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 4:
                break  # leave mid-stream: the connection closes here

    def is_idle():
        metrics = parse_metrics(httpx.get(f"{base_url}/metrics", timeout=30).text)
        running = engine_stat(metrics, "num_running", "tiny")
        free = engine_stat(metrics, "num_free_blocks", "tiny")
        total = engine_stat(metrics, "num_total_blocks", "tiny")
        return len(running) == 2 and not any(running.values()) and free == total

    wait_until(is_idle, timeout_s=30)


def test_concurrent_streams_share_step_streams(base_url, offline):
    """Streams of concurrent requests come through the replicas' step streams (one message
    per engine step for all of them) and still each get exactly their own answer."""

    def handed_off() -> float:
        metrics = parse_metrics(httpx.get(f"{base_url}/metrics", timeout=30).text)
        return sum(engine_stat(metrics, "num_step_stream_requests", "tiny").values())

    def stream(prompt: str) -> str:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "stream": True, **IGNORE}
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: {")]
        return "".join(json.loads(e)["choices"][0]["text"] for e in events)

    before = handed_off()
    prompts = [f"{PROMPT} # {i}" for i in range(8)]
    expected = [offline_text(offline["tiny"], p, 12) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(3):  # later rounds find the step streams the first ones opened
            assert list(pool.map(stream, prompts)) == expected
    assert handed_off() > before


def test_both_replicas_receive_traffic(base_url):
    def generated():
        metrics = parse_metrics(httpx.get(f"{base_url}/metrics", timeout=30).text)
        return engine_stat(metrics, "num_generated_tokens", "tiny")

    before = generated()

    def complete(i: int) -> httpx.Response:
        # A prompt of its own each: no replica holds a cached prefix of it, so the
        # kv_aware router (the default) spreads them by load alone. (One prompt for all
        # would rightly go where it is cached while that replica keeps up.)
        body = {"model": "tiny", "prompt": f"{i} {PROMPT}", "max_tokens": 16, "ignore_eos": True}
        return httpx.post(f"{base_url}/v1/completions", json=body, timeout=60)

    # Rounds of 16 (8 at a time), at most 4: the router may learn of a replica that just
    # became ready a moment late, but sustained load must reach both.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for round_index in range(4):
            statuses = list(pool.map(complete, range(16 * round_index, 16 * (round_index + 1))))
            assert all(r.status_code == 200 for r in statuses)
            after = generated()
            if len(after) == 2 and all(after[r] > before.get(r, 0) for r in after):
                break
    assert len(after) == 2
    assert all(after[replica] > before.get(replica, 0) for replica in after), (before, after)


def test_metrics_and_health(base_url):
    httpx.post(
        f"{base_url}/v1/completions",
        json={"model": "tiny", "prompt": PROMPT, "max_tokens": 3},
        timeout=60,
    )
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    metrics = parse_metrics(text)
    ok = frozenset({"model": "tiny", "route": "/v1/completions", "status": "200"}.items())
    assert metrics[("gaudi_serve_requests_total", ok)] >= 1
    tiny = frozenset({("model", "tiny")})
    assert metrics[("gaudi_serve_time_to_first_token_seconds_count", tiny)] >= 1
    assert metrics[("gaudi_serve_generation_tokens_total", tiny)] >= 3
    for field in ("kv_usage", "num_waiting", "num_bucket_misses", "padding_ratio"):
        assert engine_stat(metrics, field, "tiny"), f"no {field} in /metrics"
    health = httpx.get(f"{base_url}/health", timeout=30)
    assert health.status_code == 200
    body = health.json()
    assert {k: body[k] for k in ("healthy", "models")} == {
        "healthy": True,
        "models": {"tiny": True, "chat": True},
    }
    # every replica is listed with its state, under the ids /metrics labels it with
    assert body["replicas"]["tiny"] == dict.fromkeys(
        engine_stat(metrics, "kv_usage", "tiny"), "healthy"
    )
    assert list(body["replicas"]["chat"].values()) == ["healthy"]
