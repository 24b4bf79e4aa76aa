"""AsyncEngine: concurrent streams over one step loop, abort frees blocks at once, an
engine fault fails in-flight requests instead of hanging them."""

from __future__ import annotations

import asyncio

import pytest

from engine import AsyncEngine, EngineConfig, EngineDeadError, PromptTooLongError, SamplingParams
from tests.conftest import assert_engine_idle, hf_greedy, random_prompts

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)


@pytest.fixture
def async_engine(tiny_model_dir):
    engine = AsyncEngine(
        EngineConfig(
            model=str(tiny_model_dir("llama")),
            device="cpu",
            dtype="float32",
            kv_cache_tokens=4096,
            max_model_len=256,
        )
    )
    yield engine
    assert_engine_idle(engine.engine)
    engine.shutdown()


async def collect(engine, prompt, params, rid):
    outs = [o async for o in engine.generate(prompt, params, rid)]
    return outs


def test_concurrent_streams_match_offline_greedy(async_engine, tiny_model_dir):
    prompts = random_prompts([5, 12, 30, 7], seed=11)

    async def main():
        return await asyncio.gather(
            *[collect(async_engine, p, GREEDY, f"r{i}") for i, p in enumerate(prompts)]
        )

    results = asyncio.run(main())
    for prompt, outs in zip(prompts, results, strict=True):
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        assert outs[-1].token_ids == hf_greedy(tiny_model_dir("llama"), prompt, 16)
        # cumulative: each output extends the previous one
        lengths = [len(o.token_ids) for o in outs]
        assert lengths == sorted(lengths) and lengths[-1] == 16


def test_closing_a_stream_aborts_and_frees_blocks(async_engine):
    async def main():
        params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        stream = async_engine.generate(random_prompts([40])[0], params, "gone")
        async for out in stream:
            if len(out.token_ids) >= 3:
                break
        await stream.aclose()
        await asyncio.sleep(0.5)  # let the in-flight step finish
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
        while not received:
            await asyncio.sleep(0.01)
        await async_engine.abort("x")
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)

    asyncio.run(main())


def test_bad_prompt_raises_before_streaming(async_engine):
    async def main():
        with pytest.raises(PromptTooLongError):
            await collect(async_engine, list(range(3, 300)), GREEDY, "long")

    asyncio.run(main())


def test_engine_fault_fails_requests_in_flight(async_engine):
    def broken(*args, **kwargs):
        raise RuntimeError("device fell over")

    async def main():
        async_engine.engine.executor.execute = broken
        with pytest.raises(EngineDeadError, match="device fell over"):
            await collect(async_engine, [5, 6, 7], GREEDY, "doomed")
        assert not async_engine.is_healthy
        with pytest.raises(EngineDeadError):
            await async_engine.check_health()

    asyncio.run(main())
