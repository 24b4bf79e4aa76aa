"""The three workloads of benchmarks/routing.py, as token-id prompts and arrival times,
deterministic for a seed (the same requests for every routing policy).

- shared prefixes: `num_groups` prefixes of ~`prefix_tokens` tokens (+-10%), each request
  one of them (drawn uniformly) followed by a unique `suffix_tokens`-token suffix;
- unique prompts: nothing shared, lengths uniform in [min_tokens, max_tokens];
- chat sessions: a first prompt and one user message per later turn; a turn's prompt is
  the previous prompt + the previous answer + the next user message (built while the
  session runs, since the answer comes from the server).

Token ids are windows of the running Python's standard library, tokenized by the served
model's tokenizer (benchmarks.workload.code_prompts), so prompts look like the model's
training data; windows start at random offsets of random files, so two prompts share no
leading block unless the workload makes them.

The clients (`run_open_loop`, `run_closed_loop`, `run_chat`) send them as streamed
/v1/completions requests with token-id prompts and record what each answer took; every
run is bounded by a deadline, past which what is left is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx

from benchmarks.workload import code_prompts

MODEL_NAME = "pycoder"  # the model id the clients send


@dataclass(frozen=True)
class Request:
    """One request: its prompt, the shared prefix it extends (None: none) and when it is
    sent, in seconds after the workload starts (open loop; 0 for closed-loop workloads)."""

    prompt: list[int]
    group: int | None = None
    arrival_s: float = 0.0


@dataclass(frozen=True)
class SharedPrefixes:
    """Workload (a): requests over `prefixes`, arriving as a Poisson process."""

    prefixes: list[list[int]]
    requests: list[Request]

    def cacheable_tokens(self, group: int, block_size: int) -> int:
        """Tokens of a group's prefix a prefix cache can serve: its whole blocks (the block
        holding the prefix's end also holds unique suffix tokens)."""
        return len(self.prefixes[group]) // block_size * block_size

    def ideal_hit_tokens(self, block_size: int) -> int:
        """Prompt tokens the fleet serves from cache when each prefix is computed once (by
        the one replica that holds its group) and every later request of its group hits
        it: sum over requests of their prefix's cacheable tokens, minus each used group's
        cacheable tokens once."""
        used = {r.group for r in self.requests}
        per_request = sum(self.cacheable_tokens(r.group, block_size) for r in self.requests)
        return per_request - sum(self.cacheable_tokens(g, block_size) for g in used)


@dataclass(frozen=True)
class ChatSession:
    """Workload (c): one conversation, started `arrival_s` after the workload starts."""

    first_prompt: list[int]
    user_messages: list[list[int]] = field(default_factory=list)
    arrival_s: float = 0.0

    @property
    def num_turns(self) -> int:
        return 1 + len(self.user_messages)


def poisson_arrivals(num: int, rate_per_s: float, rng: random.Random) -> list[float]:
    """Arrival times (s) of `num` events of a Poisson process of `rate_per_s`, the first
    at 0."""
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    times, now = [], 0.0
    for _ in range(num):
        times.append(now)
        now += rng.expovariate(rate_per_s)
    return times


def shared_prefixes(
    tokenizer,
    num_groups: int,
    prefix_tokens: int,
    suffix_tokens: int,
    num_requests: int,
    rate_per_s: float,
    seed: int,
) -> SharedPrefixes:
    """Workload (a): prefixes of prefix_tokens +-10% tokens, requests drawn uniformly across
    groups, each with a unique suffix, arriving at `rate_per_s`."""
    rng = random.Random(seed)
    low, high = int(prefix_tokens * 0.9), int(prefix_tokens * 1.1)
    prefixes = code_prompts(tokenizer, num_groups, low, high, seed=seed)
    suffixes = code_prompts(tokenizer, num_requests, suffix_tokens, suffix_tokens, seed=seed + 1)
    arrivals = poisson_arrivals(num_requests, rate_per_s, rng)
    requests = []
    for suffix, arrival in zip(suffixes, arrivals, strict=True):
        group = rng.randrange(num_groups)
        requests.append(Request(prefixes[group] + suffix, group, arrival))
    return SharedPrefixes(prefixes, requests)


def unique_prompts(
    tokenizer, num_requests: int, min_tokens: int, max_tokens: int, seed: int
) -> list[Request]:
    """Workload (b): prompts that share nothing (sent closed-loop: arrival 0)."""
    return [Request(p) for p in code_prompts(tokenizer, num_requests, min_tokens, max_tokens, seed)]


def chat_sessions(
    tokenizer,
    num_sessions: int,
    num_turns: int,
    first_tokens: int,
    user_tokens: int,
    rate_per_s: float,
    seed: int,
) -> list[ChatSession]:
    """Workload (c): `num_sessions` conversations of `num_turns` turns, starting as a
    Poisson process of `rate_per_s`; first prompts of first_tokens +-25%, user messages
    of user_tokens +-25%."""
    if num_turns < 1:
        raise ValueError(f"num_turns must be >= 1, got {num_turns}")
    rng = random.Random(seed)
    firsts = code_prompts(
        tokenizer, num_sessions, int(first_tokens * 0.75), int(first_tokens * 1.25), seed
    )
    messages = code_prompts(
        tokenizer,
        num_sessions * (num_turns - 1),
        max(1, int(user_tokens * 0.75)),
        int(user_tokens * 1.25),
        seed + 1,
    )
    arrivals = poisson_arrivals(num_sessions, rate_per_s, rng)
    per = num_turns - 1
    return [
        ChatSession(first, messages[i * per : (i + 1) * per], arrival)
        for i, (first, arrival) in enumerate(zip(firsts, arrivals, strict=True))
    ]


# -- the clients that send them ---------------------------------------------------------
@dataclass
class Answer:
    """What the client saw of one answer."""

    ttft_s: float
    num_tokens: int
    num_prompt_tokens: int
    num_cached_tokens: int | None
    text: str


@dataclass
class WorkloadRun:
    """What the client saw of one workload."""

    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    timed_out: bool = False


async def send(client: httpx.AsyncClient, url: str, body: dict, start: float) -> Answer:
    """One streamed completion; TTFT counted from `start` (perf_counter)."""
    first = None
    text: list[str] = []
    usage = None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[len("data:") :])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            choices = event.get("choices") or []
            if choices and choices[0].get("text"):
                first = first or time.perf_counter()
                text.append(choices[0]["text"])
            if event.get("usage"):
                usage = event["usage"]
    if first is None:
        raise RuntimeError("no token received")
    details = (usage or {}).get("prompt_tokens_details") or {}
    return Answer(
        ttft_s=first - start,
        num_tokens=(usage or {}).get("completion_tokens") or len(text),
        num_prompt_tokens=(usage or {}).get("prompt_tokens") or len(body["prompt"]),
        num_cached_tokens=details.get("cached_tokens"),
        text="".join(text),
    )


def body(prompt: list[int], max_tokens: int) -> dict:
    return {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _one(client, url, prompt, max_tokens, start, run: WorkloadRun) -> Answer | None:
    try:
        answer = await send(client, url, body(prompt, max_tokens), start)
    except (httpx.HTTPError, RuntimeError) as exc:
        run.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        return None
    run.answers.append(answer)
    return answer


async def run_open_loop(
    url: str, requests: list[Request], max_tokens: int, timeout_s: float
) -> WorkloadRun:
    """Send each request at its arrival time, not waiting for earlier ones."""
    run = WorkloadRun()
    async with _client(len(requests)) as client:
        begin = time.perf_counter()

        async def at_arrival(request: Request) -> None:
            await asyncio.sleep(max(0.0, begin + request.arrival_s - time.perf_counter()))
            await _one(client, url, request.prompt, max_tokens, begin + request.arrival_s, run)

        await _bounded(run, [at_arrival(r) for r in requests], timeout_s)
        run.wall_s = time.perf_counter() - begin
    return run


async def run_closed_loop(
    url: str, requests: list[Request], max_tokens: int, concurrency: int, timeout_s: float
) -> WorkloadRun:
    """`concurrency` clients take the requests in order, one at a time each."""
    run = WorkloadRun()
    queue = list(reversed(requests))
    async with _client(concurrency) as client:
        begin = time.perf_counter()

        async def worker() -> None:
            while queue:
                request = queue.pop()
                await _one(client, url, request.prompt, max_tokens, time.perf_counter(), run)

        await _bounded(run, [worker() for _ in range(concurrency)], timeout_s)
        run.wall_s = time.perf_counter() - begin
    return run


async def run_chat(
    url: str, sessions: list[ChatSession], max_tokens: int, tokenizer, timeout_s: float
) -> WorkloadRun:
    """Each session starts at its arrival and runs its turns one after another; a turn's
    prompt is the last prompt + the last answer (re-tokenized) + the next user message.
    A session whose turn fails stops there."""
    run = WorkloadRun()
    async with _client(len(sessions)) as client:
        begin = time.perf_counter()

        async def session(s: ChatSession) -> None:
            await asyncio.sleep(max(0.0, begin + s.arrival_s - time.perf_counter()))
            prompt = list(s.first_prompt)
            for turn in range(s.num_turns):
                answer = await _one(client, url, prompt, max_tokens, time.perf_counter(), run)
                if answer is None:
                    return
                if turn + 1 < s.num_turns:
                    answer_ids = tokenizer.encode(answer.text, add_special_tokens=False)
                    prompt = prompt + answer_ids + s.user_messages[turn]

        await _bounded(run, [session(s) for s in sessions], timeout_s)
        run.wall_s = time.perf_counter() - begin
    return run


def _client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=16)
    return httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=30.0), limits=limits)


async def _bounded(run: WorkloadRun, coroutines: list, timeout_s: float) -> None:
    """Run the coroutines together; past timeout_s cancel what is left (run.timed_out)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    if pending:
        run.timed_out = True
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
