"""Mixtral's static-shape MoE layer (engine.models.mixtral): numerically transformers' own
block on random inputs, free of data-dependent ops, parameters unchanged; and the engine
running it greedy token-identical to transformers' generate (fp32) with 8 experts, top-2
(Mixtral's ratio), so decode steps of one sequence take the gathered path and larger
steps the dense one."""

from __future__ import annotations

import pytest
import torch

from engine import SamplingParams
from engine.audit import Category, audit_forward
from engine.models.mixtral import StaticMoeBlock, StaticMoeExperts, patch_model
from tests.conftest import (
    STAGGERED_MAX_TOKENS,
    assert_engine_idle,
    hf_greedy,
    random_prompts,
    run_staggered,
    tiny_config,
)

EIGHT_EXPERTS = {"num_local_experts": 8, "num_experts_per_tok": 2}
# tokens -> path taken with 8 experts, top-2: gathered while tokens x 2 < 8
TOKEN_COUNTS = {1: "gathered", 3: "gathered", 4: "dense", 37: "dense"}


def transformers_block(implementation: str = "eager"):
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = tiny_config("mixtral", **EIGHT_EXPERTS)
    config._experts_implementation = implementation
    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0.0, 0.2)
    return block


def hidden(num_tokens: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, num_tokens, 64, generator=torch.Generator().manual_seed(seed))


# -- the block ---------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
@pytest.mark.parametrize("num_tokens", list(TOKEN_COUNTS))
def test_static_block_equals_transformers_block(implementation, num_tokens):
    reference = transformers_block(implementation)
    static = StaticMoeBlock(transformers_block())
    x = hidden(num_tokens)
    with torch.no_grad():
        torch.testing.assert_close(static(x), reference(x))


@pytest.mark.parametrize("num_tokens", list(TOKEN_COUNTS))
def test_dense_and_gathered_paths_agree(num_tokens):
    block = StaticMoeBlock(transformers_block())
    flat = hidden(num_tokens).reshape(num_tokens, 64)
    with torch.no_grad():
        _, weights, index = block.gate(flat)
        dense = block.experts.dense(flat, index, weights)
        gathered = block.experts.gathered(flat, index, weights)
        chosen = getattr(block.experts, TOKEN_COUNTS[num_tokens])(flat, index, weights)
        torch.testing.assert_close(dense, gathered)
        assert torch.equal(block.experts(flat, index, weights), chosen)


def test_routing_is_transformers_softmax_top_k_renormalised():
    """The router is transformers' own module: fp32 softmax, top-k, weights summing to 1."""
    block = StaticMoeBlock(transformers_block())
    flat = hidden(5).reshape(5, 64)
    with torch.no_grad():
        logits, weights, index = block.gate(flat)
    probs = torch.softmax(logits.float(), dim=-1)
    assert torch.equal(index, probs.topk(2, dim=-1).indices)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(5))
    assert block.gate is not None and type(block.gate).__name__ == "MixtralTopKRouter"


@pytest.mark.parametrize("num_tokens", list(TOKEN_COUNTS))
def test_static_block_has_no_data_dependent_op(num_tokens):
    static = StaticMoeBlock(transformers_block())
    x = hidden(num_tokens)
    with torch.no_grad():
        report = audit_forward(static, lambda: static(x))
    assert report.is_clean, report.format()


def test_transformers_block_is_flagged():
    """The audit sees what the static block replaces: nonzero over the expert mask."""
    block = transformers_block("eager")
    x = hidden(9)
    with torch.no_grad():
        report = audit_forward(block, lambda: block(x))
    assert "aten.nonzero.default" in {f.op for f in report.by_category(Category.DYNAMIC_SHAPE)}


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_patch_keeps_parameter_names_and_tensors(device):
    from transformers import MixtralForCausalLM

    with torch.device(device):
        model = MixtralForCausalLM(tiny_config("mixtral"))
    before = dict(model.named_parameters())
    assert patch_model(model) is model
    after = dict(model.named_parameters())
    assert list(after) == list(before)
    assert all(after[name] is param for name, param in before.items())
    blocks = [m for m in model.modules() if isinstance(m, StaticMoeBlock)]
    assert len(blocks) == 2 and all(isinstance(b.experts, StaticMoeExperts) for b in blocks)
    assert "model.layers.0.mlp.experts.gate_up_proj" in after


# -- the engine --------------------------------------------------------------------------
MAX_NEW = 12
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("mixtral", **EIGHT_EXPERTS)


def test_engine_runs_the_static_block(model_dir, make_llm):
    llm = make_llm(model_dir, skip_tokenizer_init=True)
    model = llm.engine.executor.runner.model
    assert [type(layer.mlp) for layer in model.model.layers] == [StaticMoeBlock] * 2


def test_batch_together_and_staggered_match_transformers(model_dir, make_llm):
    """Prompts of different lengths at once, then arrivals at different steps, one running
    alone first (decode steps of 1 token: the gathered path)."""
    prompts = random_prompts([3, 17, 40, 64], seed=1)
    llm = make_llm(model_dir, skip_tokenizer_init=True, block_size=8)
    for prompt, out in zip(prompts, llm.generate(prompts, GREEDY), strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, MAX_NEW)

    engine = llm.engine
    prompts = random_prompts([9, 33, 5, 21, 48], seed=2)
    arrivals = {0: [0], 3: [1, 2], 4: [3], 8: [4]}  # step -> prompts arriving
    results = run_staggered(engine, prompts, arrivals=arrivals)
    for i, prompt in enumerate(prompts):
        assert results[f"r{i}"] == hf_greedy(model_dir, prompt, STAGGERED_MAX_TOKENS[i])
    assert_engine_idle(engine)


def test_prefix_reuse_matches_transformers(model_dir, make_llm):
    shared = random_prompts([40], seed=4)[0]
    prompts = [[*shared, *tail] for tail in random_prompts([5, 1, 7], seed=5)]
    llm = make_llm(model_dir, skip_tokenizer_init=True, block_size=8)
    outs = [llm.generate(prompts[0], GREEDY)[0], *llm.generate(prompts[1:], GREEDY)]
    assert [o.num_cached_tokens for o in outs] == [0, 40, 40]
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, MAX_NEW)
    assert_engine_idle(llm.engine)


def test_preemption_matches_transformers(model_dir, make_llm):
    """12 blocks of 8 tokens (96 slots) for 6 requests needing 34-46 each."""
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
