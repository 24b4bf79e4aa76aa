"""The KV-aware request router in a real Serve app: two replicas of a tiny model behind the
ingress, requests over HTTP. What the router knows is read from the ingress's /metrics
(its mirrored blocks per replica, its decisions by reason) and where requests went from
each replica's engine counters (prefill and prefix-hit tokens)."""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray

from engine import load_prompt_encoder
from tests.deployments.serve_fixtures import (
    model_entry,
    running_app,
    wait_until,
    with_chat_template,
)

MODEL = "tiny"
BLOCK = 16
PREFIX_BLOCKS = 5  # a shared prefix of 80 tokens; prompts stay under max_model_len 128


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    return with_chat_template(tiny_model_dir(), tmp_path_factory.mktemp("chat") / "m")


@pytest.fixture(scope="module")
def app(chat_model_dir):
    entry = model_entry(
        MODEL,
        chat_model_dir,
        num_replicas=2,
        max_ongoing_requests=3,
        request_router="kv_aware",
        routing_stats_period_s=0.5,
    )
    with running_app([entry], num_cpus=6) as url:
        yield url


@pytest.fixture(scope="module")
def encoder(chat_model_dir):
    return load_prompt_encoder(chat_model_dir)


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{labels: value} of one metric family in a Prometheus exposition."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"{name}{{(.*)}} (\S+)$", line)
        if m:
            labels = tuple(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[labels] = float(m.group(2))
    return out


def per_replica(text: str, stat: str) -> dict[str, float]:
    found = samples(text, f"gaudi_serve_engine_{stat}_total")
    return {dict(labels)["replica"]: value for labels, value in found.items()}


def mirrored_blocks(url: str) -> dict[str, float]:
    found = samples(metrics(url), "gaudi_serve_router_cached_blocks")
    return {dict(labels)["replica"]: value for labels, value in found.items()}


def decisions(url: str) -> dict[str, float]:
    found = samples(metrics(url), "gaudi_serve_router_decisions_total")
    return {dict(labels)["reason"]: value for labels, value in found.items()}


def complete(url: str, prompt, max_tokens: int = 4) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def cached_tokens(response: dict) -> int:
    details = response["usage"].get("prompt_tokens_details") or {}
    return details.get("cached_tokens", 0)


def random_ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 200) for _ in range(n)]


def test_requests_sharing_a_prefix_land_where_it_is_cached(app):
    prefix = random_ids(1, PREFIX_BLOCKS * BLOCK)
    complete(app, [*prefix, 1])
    # The router learns the blocks from the replica's update (step stream or routing stats).
    holders = wait_until(
        lambda: {r for r, n in mirrored_blocks(app).items() if n >= PREFIX_BLOCKS}, 30
    )
    before = per_replica(metrics(app), "num_prefix_hit_tokens")
    for i in range(6):
        response = complete(app, [*prefix, 2 + i, 3])
        assert cached_tokens(response) == PREFIX_BLOCKS * BLOCK, response["usage"]
    after = per_replica(metrics(app), "num_prefix_hit_tokens")
    gained = {r for r in after if after[r] > before.get(r, 0)}
    assert gained <= holders
    assert decisions(app).get("cache_hit", 0) >= 6


def test_text_token_ids_and_chat_prompts_hash_the_same(app, encoder):
    # NOTE: the tiny tokenizer is trained on engine source, so token counts move with it:
    # keep the chat (the text plus ~20 template tokens) well under max_model_len 128.
    text = "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2) "
    text += "# the nth Fibonacci number"
    ids = encoder.encode(text)
    assert len(ids) > 2 * BLOCK
    assert len(encoder.encode_chat([{"role": "user", "content": text}])) < 100
    complete(app, text)
    num_blocks = (len(ids) - 1) // BLOCK
    wait_until(lambda: max(mirrored_blocks(app).values(), default=0) >= num_blocks, 30)
    assert cached_tokens(complete(app, ids)) == num_blocks * BLOCK
    assert cached_tokens(complete(app, text)) == num_blocks * BLOCK
    messages = [{"role": "user", "content": text}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 4, "temperature": 0}
    first = httpx.post(f"{app}/v1/chat/completions", json=body, timeout=120)
    assert first.status_code == 200, first.text
    chat_ids = encoder.encode_chat(messages)
    num_chat_blocks = (len(chat_ids) - 1) // BLOCK
    wait_until(lambda: max(mirrored_blocks(app).values(), default=0) >= num_chat_blocks, 30)
    # The chat, sent again as its template's token ids, is the same prompt to the cache.
    assert cached_tokens(complete(app, chat_ids)) == num_chat_blocks * BLOCK


def test_a_full_cache_holder_spills_to_the_other_replica(app):
    prefix = random_ids(3, PREFIX_BLOCKS * BLOCK)
    complete(app, [*prefix, 1])
    wait_until(lambda: max(mirrored_blocks(app).values(), default=0) >= PREFIX_BLOCKS, 30)
    before = per_replica(metrics(app), "num_prefill_tokens")
    counts = decisions(app)
    away_before = counts.get("spilled", 0) + counts.get("least_wait", 0)
    # Six long answers at once: the holder takes what its queue admits
    # (max_ongoing_requests), the rest spill to the other replica.
    with ThreadPoolExecutor(6) as pool:
        prompts = [[*prefix, 10 + i] for i in range(6)]
        list(pool.map(lambda p: complete(app, p, max_tokens=40), prompts))
    after = per_replica(metrics(app), "num_prefill_tokens")
    assert all(after[r] > before.get(r, 0) for r in after), (before, after)
    assert len(after) == 2
    counts = decisions(app)  # some went away from the holder: refused, or predicted sooner
    assert counts.get("spilled", 0) + counts.get("least_wait", 0) > away_before


def test_a_dead_replica_is_never_chosen_and_its_replacement_starts_empty(app):
    prefix = random_ids(4, PREFIX_BLOCKS * BLOCK)
    complete(app, [*prefix, 1])
    holders = wait_until(
        lambda: {r for r, n in mirrored_blocks(app).items() if n >= PREFIX_BLOCKS}, 30
    )
    before = set(per_replica(metrics(app), "num_steps"))
    victim = next(iter(holders))
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if victim in a["name"]]
    assert len(actors) == 1, actors
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
    # At once, before Serve's controller says so: the router's favourite (it holds the
    # prefix) is dead. Sending to it fails, Serve tells the router, and the request goes
    # elsewhere: every request succeeds.
    for i in range(6):
        complete(app, [*prefix, 2 + i])
    wait_until(lambda: victim not in mirrored_blocks(app), 60)
    for i in range(3):
        complete(app, [*prefix, 20 + i])
    assert victim not in mirrored_blocks(app)

    def replacement() -> str | None:
        replicas = set(per_replica(metrics(app), "num_steps"))
        new = replicas - before
        return next(iter(new)) if len(replicas) == 2 and new else None

    new = wait_until(replacement, 120)
    assert new != victim
    # A new replica id: the router knows nothing of the victim's cache under it.
    assert mirrored_blocks(app).get(new, 0) < PREFIX_BLOCKS
