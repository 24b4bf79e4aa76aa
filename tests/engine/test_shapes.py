"""Static shapes: every step is padded to a warmed bucket, padding never changes output,
and after warmup a long random trace hits no unwarmed shape."""

from __future__ import annotations

import random

import pytest

from engine import SamplingParams
from engine.buckets import BucketConfig
from engine.errors import BucketMissError
from engine.shapes import StepShaper
from tests.conftest import hf_greedy, random_prompts

SMALL = dict(max_num_seqs=8, max_model_len=128, block_size=8, max_num_batched_tokens=128)


def test_padding_never_changes_greedy_output(tiny_model_dir, make_llm):
    """3 prompts of odd lengths run in a (4 x 64) prefill bucket and (4 x blocks) decode
    buckets; a linear grid pads differently; both equal transformers' unpadded output."""
    model_dir = tiny_model_dir("llama")
    prompts = random_prompts([5, 23, 41], seed=21)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    for strategy in ("exponential", "linear"):
        buckets = BucketConfig.from_limits(
            max_num_seqs=8,
            max_model_len=128,
            block_size=8,
            max_num_batched_tokens=256,
            strategy=strategy,
        )
        llm = make_llm(
            model_dir,
            skip_tokenizer_init=True,
            buckets=buckets,
            **{k: v for k, v in SMALL.items() if k != "max_num_batched_tokens"},
            max_num_batched_tokens=256,
        )
        outs = llm.generate(prompts, params)
        stats = llm.engine.stats()
        assert stats.num_padded_tokens > stats.num_real_tokens  # padding did happen
        for prompt, out in zip(prompts, outs, strict=True):
            assert out.token_ids == hf_greedy(model_dir, prompt, 10)


def test_no_bucket_misses_over_a_random_trace_after_warmup(tiny_model_dir, make_llm):
    """500 requests, random prompt lengths (some sharing prefixes, some chunked) and
    max_tokens, arriving in waves: after warmup no step runs an unwarmed shape."""
    llm = make_llm(
        tiny_model_dir("llama"),
        skip_tokenizer_init=True,
        warmup=True,
        strict_shapes=True,
        kv_cache_tokens=512,
        **SMALL,
    )
    engine = llm.engine
    stats = engine.stats()
    assert stats.num_warmed_shapes == len(engine.shaper.warmup_shapes()) > 0
    assert stats.num_bucket_misses == 0 and stats.warmup_s > 0
    rng = random.Random(0)
    shared = random_prompts([40], seed=22)[0]
    done = 0
    for wave in range(25):
        for i in range(20):
            n = rng.randint(1, 120)
            prompt = (
                (shared + [3] * n)[:n]
                if i % 4 == 0
                else random_prompts([n], seed=i + 100 * wave)[0]
            )
            params = SamplingParams(
                max_tokens=rng.randint(1, 128 - n), temperature=0, ignore_eos=True
            )
            engine.add_request(f"{wave}-{i}", prompt, params)
        for _ in range(rng.randint(1, 30)):
            done += sum(o.finished for o in engine.step())
    while engine.has_unfinished:
        done += sum(o.finished for o in engine.step())
    stats = engine.stats()
    assert done == 500
    assert stats.num_bucket_misses == 0
    assert stats.num_prefix_hit_tokens > 0 and stats.num_preemptions > 0  # all paths taken
    assert stats.padding_ratio >= 1.0


def test_strict_shapes_raises_on_an_unwarmed_shape(tiny_model_dir, make_llm):
    llm = make_llm(
        tiny_model_dir("llama"), skip_tokenizer_init=True, warmup=False, strict_shapes=True, **SMALL
    )
    with pytest.raises(BucketMissError, match="was not warmed"):
        llm.generate([[5, 6, 7]], SamplingParams(max_tokens=2))
    llm.engine.abort_request("offline-0")


def test_buckets_must_cover_max_model_len(tiny_model_dir):
    from engine import LLM

    buckets = BucketConfig.from_limits(
        max_num_seqs=8, max_model_len=64, block_size=8, max_num_batched_tokens=128
    )
    with pytest.raises(ValueError, match=r"reach 8 blocks \(64 tokens\), less than max_model_len"):
        LLM(
            str(tiny_model_dir("llama")),
            device="cpu",
            skip_tokenizer_init=True,
            max_model_len=128,
            block_size=8,
            buckets=buckets,
        )


def test_warmup_shapes_cover_every_formable_step():
    shaper = StepShaper(BucketConfig.from_limits(**SMALL), block_size=8)
    warmed = set(shaper.warmup_shapes())
    for batch in range(1, 9):
        for blocks in range(1, 17):
            assert shaper.decode_shape(batch, blocks) in warmed
        for length in range(1, shaper.max_prefill_len(batch) + 1):
            for ctx in range(1, 17):
                assert shaper.prefill_shape(batch, length, max(ctx, -(-length // 8))) in warmed
