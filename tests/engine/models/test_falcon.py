"""Falcon over the paged KV cache (engine.models.falcon): greedy output token-identical to
transformers' generate (fp32) for every attention layout (new decoder architecture with KV
groups, old multi-query and multi-head, parallel and sequential attention, biases, ALiBi),
batched, staggered, reusing a cached prefix and under preemption; every KV block is free
at the end (make_llm's teardown). The KV cache holds the model's own KV heads."""

from __future__ import annotations

import json

import pytest
import torch

from engine import SamplingParams
from engine.audit import audit_model
from engine.errors import UnsupportedModelError
from engine.loader import KVSpec, load_config
from tests.conftest import (
    STAGGERED_MAX_TOKENS,
    assert_engine_idle,
    hf_greedy,
    random_prompts,
    run_staggered,
)
from tests.engine.models.falcon_variants import KV_HEADS, VARIANTS, save_falcon

MAX_NEW = 12
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
# the layouts that split the fused qkv differently, and ALiBi
MAIN_VARIANTS = ["new-arch-gqa", "multi-query", "multi-head", "alibi"]


@pytest.fixture(scope="module")
def falcon_dir(tmp_path_factory):
    """Factory: variant name -> directory with that tiny Falcon (built once per module)."""
    made = {}

    def make(variant: str):
        if variant not in made:
            out = tmp_path_factory.mktemp(f"falcon-{variant}")
            made[variant] = save_falcon(out, **VARIANTS[variant])
        return made[variant]

    return make


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batch_together_matches_transformers(variant, falcon_dir, make_llm):
    model_dir = falcon_dir(variant)
    prompts = random_prompts([3, 17, 40, 64], seed=1)
    outs = make_llm(model_dir, skip_tokenizer_init=True, block_size=16).generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, MAX_NEW)


@pytest.mark.parametrize("variant", MAIN_VARIANTS)
def test_staggered_arrivals_match_transformers(variant, falcon_dir, make_llm):
    model_dir = falcon_dir(variant)
    prompts = random_prompts([9, 33, 5, 21, 48], seed=2)
    engine = make_llm(model_dir, skip_tokenizer_init=True, block_size=8).engine
    results = run_staggered(engine, prompts)
    for i, prompt in enumerate(prompts):
        expected = hf_greedy(model_dir, prompt, STAGGERED_MAX_TOKENS[i])
        assert results[f"r{i}"] == expected
    assert_engine_idle(engine)


@pytest.mark.parametrize("variant", MAIN_VARIANTS)
def test_prefix_reuse_matches_transformers(variant, falcon_dir, make_llm):
    """Prompts sharing a cached 40-token prefix compute only their tails (ALiBi: the
    cached keys' biases still follow their positions)."""
    model_dir = falcon_dir(variant)
    shared = random_prompts([40], seed=4)[0]
    prompts = [[*shared, *tail] for tail in random_prompts([5, 1, 7, 20], seed=5)]
    llm = make_llm(model_dir, skip_tokenizer_init=True, block_size=8)
    outs = [*llm.generate(prompts[:1], GREEDY), *llm.generate(prompts[1:], GREEDY)]
    assert [o.num_cached_tokens for o in outs] == [0, 40, 40, 40]
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, MAX_NEW)


@pytest.mark.parametrize("variant", MAIN_VARIANTS)
def test_preemption_matches_transformers(variant, falcon_dir, make_llm):
    """12 blocks of 8 tokens for 6 requests needing 34-46 slots each: preempted and
    recomputed, with the same output."""
    model_dir = falcon_dir(variant)
    prompts = random_prompts([20, 30, 25, 18, 27, 22], seed=3)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    llm = make_llm(
        model_dir, skip_tokenizer_init=True, block_size=8, kv_cache_tokens=96, max_model_len=64
    )
    outs = llm.generate(prompts, params)
    assert llm.engine.stats().num_preemptions > 0
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, 16)


def test_alibi_bias_is_applied(falcon_dir, tmp_path, make_llm):
    """The same weights without ALiBi (rotary instead) give other tokens: the identity of
    the ALiBi model with transformers is not one that ignores the bias."""
    with_alibi = falcon_dir("alibi")
    rotary = save_falcon(tmp_path, **{**VARIANTS["alibi"], "alibi": False})
    prompts = random_prompts([40, 64], seed=1)
    outs = make_llm(with_alibi, skip_tokenizer_init=True).generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] != [hf_greedy(rotary, p, MAX_NEW) for p in prompts]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_holds_the_models_own_kv_heads(variant, falcon_dir):
    config = load_config(falcon_dir(variant))
    assert config.num_key_value_heads == KV_HEADS[variant]
    spec = KVSpec.from_config(config, torch.float32)
    assert (spec.num_kv_heads, spec.head_dim, spec.num_layers) == (KV_HEADS[variant], 16, 2)


def test_multi_query_refuses_tensor_parallelism(falcon_dir):
    config = load_config(falcon_dir("multi-query"))
    with pytest.raises(ValueError, match=r"tp_size 2 does not divide the model's 1 KV heads"):
        KVSpec.from_config(config, torch.float32, tp_size=2)


def test_a_stated_kv_head_count_that_disagrees_is_refused(falcon_dir, tmp_path):
    model_dir = save_falcon(tmp_path, **VARIANTS["multi-query"])
    config_path = model_dir / "config.json"
    config_path.write_text(
        json.dumps({**json.loads(config_path.read_text()), "num_key_value_heads": 4})
    )
    with pytest.raises(
        UnsupportedModelError, match=r"num_key_value_heads=4 disagrees .* 1 KV heads"
    ):
        load_config(model_dir)


@pytest.mark.parametrize("variant", ["multi-query", "multi-head", "alibi"])
def test_engine_forward_audits_clean(variant, falcon_dir):
    report = audit_model(falcon_dir(variant))
    assert report.is_clean, report.format()
