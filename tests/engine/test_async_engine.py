"""AsyncEngine: concurrent streams over one step loop, abort frees blocks at once, an
engine fault (injected through the executor it is given) fails in-flight requests instead
of hanging them, and the server surface (warm-up, encoding, model info)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from engine import (
    AsyncEngine,
    EngineConfig,
    EngineDeadError,
    PromptTooLongError,
    SamplingParams,
    create_local_executor,
)
from tests.conftest import assert_engine_idle, hf_greedy, random_prompts

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
DEADLINE_S = 60.0  # hang guard for conditions that hold within a step or two


class FaultyExecutor:
    """The real local executor; once `fault` is set, `execute` raises it, as a device that
    fell over would. Every other call goes to the real executor."""

    def __init__(self, config: EngineConfig, model_path: Path):
        self.inner = create_local_executor(config, model_path)
        self.fault: Exception | None = None
        self.num_executed = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def execute(self, inp):
        if self.fault is not None:
            raise self.fault
        self.num_executed += 1
        return self.inner.execute(inp)


@pytest.fixture
def executors() -> list[FaultyExecutor]:
    """The executors the engine under test was given, in creation order."""
    return []


@pytest.fixture
def async_engine(tiny_model_dir, executors):
    def make_executor(config: EngineConfig, model_path: Path) -> FaultyExecutor:
        executors.append(FaultyExecutor(config, model_path))
        return executors[-1]

    engine = AsyncEngine(
        EngineConfig(
            model=str(tiny_model_dir("llama")),
            device="cpu",
            dtype="float32",
            kv_cache_tokens=4096,
            max_model_len=256,
        ),
        executor_factory=make_executor,
    )
    yield engine
    assert_engine_idle(engine.engine)
    engine.shutdown()


async def collect(engine, prompt, params, rid):
    outs = [o async for o in engine.generate(prompt, params, rid)]
    return outs


async def wait_for(predicate, what: str) -> None:
    """Yield to the event loop until `predicate()` holds; raise after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {DEADLINE_S:.0f} s for {what}")
        await asyncio.sleep(0.01)


def is_idle(engine: AsyncEngine) -> bool:
    stats = engine.stats()
    return stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks


def test_concurrent_streams_match_offline_greedy(async_engine, tiny_model_dir):
    prompts = random_prompts([5, 12, 30, 7], seed=11)

    async def main():
        return await asyncio.gather(
            *[collect(async_engine, p, GREEDY, f"r{i}") for i, p in enumerate(prompts)]
        )

    results = asyncio.run(main())
    for prompt, outs in zip(prompts, results, strict=True):
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        # deltas: each carries only its new tokens, and they add up to the whole answer
        token_ids = [t for o in outs for t in o.token_ids]
        assert token_ids == hf_greedy(tiny_model_dir("llama"), prompt, 16)
        lengths = [o.num_generated_tokens for o in outs]
        assert lengths == sorted(lengths) and lengths[-1] == 16
        assert lengths == list(itertools.accumulate(len(o.token_ids) for o in outs))
        assert outs[0].prompt_token_ids == prompt
        assert all(o.prompt_token_ids is None for o in outs[1:])
    # the forward's CPU is counted, and is part of this process's
    assert 0 < async_engine.forward_cpu_s <= time.process_time()


def test_closing_a_stream_aborts_and_frees_blocks(async_engine):
    async def main():
        params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        stream = async_engine.generate(random_prompts([40])[0], params, "gone")
        async for out in stream:
            if out.num_generated_tokens >= 3:
                break
        await stream.aclose()
        # the abort lands once the in-flight step finishes
        await wait_for(lambda: is_idle(async_engine), "the aborted request's blocks")
        return async_engine.stats()

    stats = asyncio.run(main())
    assert stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks


def test_explicit_abort_ends_the_stream(async_engine):
    async def main():
        params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        received = []

        async def consume():
            async for out in async_engine.generate([5, 6, 7], params, "x"):
                received.append(out)

        task = asyncio.create_task(consume())
        await wait_for(lambda: received, "the first output")
        await async_engine.abort("x")
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: is_idle(async_engine), "the aborted request's blocks")

    asyncio.run(main())


def test_bad_prompt_raises_before_streaming(async_engine):
    async def main():
        with pytest.raises(PromptTooLongError):
            await collect(async_engine, list(range(3, 300)), GREEDY, "long")

    asyncio.run(main())


def test_engine_fault_fails_requests_in_flight(async_engine, executors):
    async def main():
        executors[0].fault = RuntimeError("device fell over")
        with pytest.raises(EngineDeadError, match="device fell over"):
            await collect(async_engine, [5, 6, 7], GREEDY, "doomed")
        assert not async_engine.is_healthy
        with pytest.raises(EngineDeadError):
            await async_engine.check_health()

    asyncio.run(main())


def test_server_surface_warm_up_encoding_and_info(async_engine, executors, tiny_model_dir):
    tokenizer = async_engine.engine.tokenizer
    num_before = executors[0].num_executed
    async_engine.warm_up([5, 6, 7], SamplingParams(max_tokens=2))
    assert executors[0].num_executed > num_before  # real steps ran through the executor
    assert async_engine.encode("def f(x):") == tokenizer.encode("def f(x):")
    assert async_engine.decode([5, 6, 7]) == tokenizer.decode([5, 6, 7])
    info = async_engine.info()
    assert info.model_path == tiny_model_dir("llama")
    assert (info.device, info.dtype, info.tp_size) == ("cpu", "float32", 1)
    assert (info.max_model_len, info.max_num_seqs) == (256, async_engine.config.max_num_seqs)
    assert info.vocab_size == async_engine.engine.hf_config.vocab_size
    assert info.special_token_ids == frozenset(tokenizer.all_special_ids)
    assert info.bos_token_id == tokenizer.bos_token_id
    assert info.chat_template is None
    with pytest.raises(ValueError, match="chat template"):
        async_engine.encode_chat([{"role": "user", "content": "hi"}])
    assert asyncio.run(collect(async_engine, [5, 6, 7], GREEDY, "after-warm-up"))[-1].finished
    with pytest.raises(RuntimeError, match="before the first generate"):
        async_engine.warm_up([5, 6, 7], SamplingParams(max_tokens=2))
