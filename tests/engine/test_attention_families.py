"""Greedy output is token-identical to transformers' generate (fp32) for every supported
family: prompts of different lengths submitted together, staggered arrivals, prompts that
reuse a cached prefix, and a KV pool so small that requests are preempted; every KV block
is free at the end. Variants of the code families (multi-head StarCoder, Phi with qk
layernorm, StarCoder2 without a window or biases) are checked too."""

from __future__ import annotations

import pytest

from engine import SamplingParams
from engine.errors import UnsupportedModelError
from engine.families import FAMILIES
from tests.conftest import (
    STAGGERED_MAX_TOKENS,
    assert_engine_idle,
    hf_greedy,
    random_prompts,
    run_staggered,
)

MAX_NEW = 12
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_together_matches_transformers(family, tiny_model_dir, make_llm):
    model_dir = tiny_model_dir(family)
    prompts = random_prompts([3, 17, 40, 64], seed=1)
    llm = make_llm(model_dir, skip_tokenizer_init=True, block_size=16)
    outs = llm.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, MAX_NEW)
        assert out.finish_reason == "length"
        assert out.prompt_token_ids == prompt


@pytest.mark.parametrize("family", list(FAMILIES))
def test_staggered_arrivals_match_transformers(family, tiny_model_dir, make_llm):
    """Requests join a running batch at different steps (continuous batching) and leave it
    at different steps (different max_tokens)."""
    model_dir = tiny_model_dir(family)
    prompts = random_prompts([9, 33, 5, 21, 48], seed=2)
    engine = make_llm(model_dir, skip_tokenizer_init=True, block_size=8).engine
    results = run_staggered(engine, prompts)
    for i, prompt in enumerate(prompts):
        expected = hf_greedy(model_dir, prompt, STAGGERED_MAX_TOKENS[i])
        assert results[f"r{i}"] == expected
    assert_engine_idle(engine)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefix_reuse_matches_transformers(family, tiny_model_dir, make_llm):
    """A first request caches a 40-token prefix (5 blocks of 8); prompts sharing it,
    submitted together, reuse those blocks and compute only their own tails."""
    model_dir = tiny_model_dir(family)
    shared = random_prompts([40], seed=4)[0]
    tails = random_prompts([5, 1, 7, 20], seed=5)
    prompts = [[*shared, *tail] for tail in tails]
    llm = make_llm(model_dir, skip_tokenizer_init=True, block_size=8)
    first = llm.generate(prompts[0], GREEDY)[0]
    assert first.num_cached_tokens == 0
    hits_before = llm.engine.stats().num_prefix_hit_tokens
    outs = [first, *llm.generate(prompts[1:], GREEDY)]
    assert [o.num_cached_tokens for o in outs[1:]] == [len(shared)] * 3
    assert llm.engine.stats().num_prefix_hit_tokens - hits_before == 3 * len(shared)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, MAX_NEW)
    assert_engine_idle(llm.engine)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_preemption_matches_transformers(family, tiny_model_dir, make_llm):
    """12 blocks of 8 tokens (96 slots) for 6 requests needing 34-46 each: requests are
    preempted and recomputed, and the output does not change."""
    model_dir = tiny_model_dir(family)
    prompts = random_prompts([20, 30, 25, 18, 27, 22], seed=3)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    llm = make_llm(
        model_dir, skip_tokenizer_init=True, block_size=8, kv_cache_tokens=96, max_model_len=64
    )
    outs = llm.generate(prompts, params)
    assert llm.engine.stats().num_preemptions > 0
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, 16)
    assert_engine_idle(llm.engine)


# name -> (family, tiny_config overrides): shapes the families' FAMILY_CONFIGS lines leave out
VARIANTS = {
    # multi-head c_attn: q/k/v interleaved per head, one KV head per query head
    "starcoder-multi-head": ("gpt_bigcode", {"multi_query": False, "num_key_value_heads": 4}),
    # per-head LayerNorm of q and k before the partial rotary
    "phi-qk-layernorm": ("phi", {"qk_layernorm": True}),
    "starcoder2-no-window-no-bias": ("starcoder2", {"sliding_window": None, "use_bias": False}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_family_variants_match_transformers(variant, tiny_model_dir, make_llm):
    family, overrides = VARIANTS[variant]
    model_dir = tiny_model_dir(family, **overrides)
    prompts = random_prompts([3, 17, 40, 64], seed=1)
    outs = make_llm(model_dir, skip_tokenizer_init=True, block_size=16).generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, MAX_NEW)


def test_sliding_window_is_applied(tiny_model_dir, make_llm):
    """StarCoder2's tiny model has a 24-token window: past it, output follows the window
    (transformers') and differs from the same weights attending to everything."""
    windowed = tiny_model_dir("starcoder2")
    unwindowed = tiny_model_dir("starcoder2", sliding_window=None)
    prompts = random_prompts([40, 64], seed=1)
    outs = make_llm(windowed, skip_tokenizer_init=True).generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(windowed, prompt, MAX_NEW)
        assert out.token_ids != hf_greedy(unwindowed, prompt, MAX_NEW)


def test_unsupported_family_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(
        tmp_path
    )
    from engine import LLM

    with pytest.raises(UnsupportedModelError, match=r"gpt2.*supported: Llama"):
        LLM(str(tmp_path), skip_tokenizer_init=True, device="cpu")


def test_missing_model_dir_is_a_clear_error(tmp_path):
    from engine import LLM

    with pytest.raises(FileNotFoundError, match="never downloads"):
        LLM(str(tmp_path / "nope"), device="cpu")
