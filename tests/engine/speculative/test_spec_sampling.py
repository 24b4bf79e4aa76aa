"""Sampled outputs with speculation follow the target's distribution: toy models with a
12-token vocabulary, one prompt, thousands of requests with different seeds; the empirical
distribution of the generated tokens at each position is compared in total variation with
the target's exact marginal distribution there (computed with transformers by enumerating
every prefix). The first token comes from the prefill step; the next ones from verify
steps (accepted proposals, residual draws and bonus tokens)."""

from __future__ import annotations

import pytest
import torch

from engine import SamplingParams, SpeculativeConfig
from tests.conftest import tiny_config

VOCAB = 12
PROMPT = [3, 5, 7, 2]
NUM_SAMPLES = 3000


def toy_model(out_dir, seed: int, sharpness: float):
    """A random llama over VOCAB tokens; scaling lm_head sharpens its distributions."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config("llama", vocab_size=VOCAB, bos_token_id=0, eos_token_id=1)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    model.save_pretrained(out_dir)
    return model.eval()


@pytest.fixture(scope="module")
def toy_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    # sum(min(p, q)) of the first step is ~0.44: proposals are often rejected
    target = toy_model(root / "target", seed=5, sharpness=8.0)
    toy_model(root / "draft", seed=6, sharpness=8.0)
    return root / "target", root / "draft", target


def exact_marginals(model, prompt: list[int], num_tokens: int) -> list[torch.Tensor]:
    """The target's distribution of each generated position, [VOCAB] each, summed over
    every prefix of generated tokens before it."""
    prefixes, weights = [[]], torch.ones(1)
    marginals = []
    with torch.inference_mode():
        for _ in range(num_tokens):
            logits = model(torch.tensor([[*prompt, *p] for p in prefixes])).logits[:, -1]
            joint = weights[:, None] * logits.softmax(-1)  # [prefixes, VOCAB]
            marginals.append(joint.sum(0))
            prefixes = [[*p, t] for p in prefixes for t in range(VOCAB)]
            weights = joint.reshape(-1)
    return marginals


def total_variation(tokens: list[int], expected: torch.Tensor) -> float:
    freq = torch.bincount(torch.tensor(tokens), minlength=VOCAB).float() / len(tokens)
    return 0.5 * (freq - expected).abs().sum().item()


@pytest.mark.parametrize("method", ["draft", "ngram", "hybrid"])
def test_sampled_tokens_follow_the_target_distribution(method, toy_pair, make_llm):
    target_dir, draft_dir, target = toy_pair
    spec = SpeculativeConfig(
        method=method,
        num_speculative_tokens=3,
        draft_model=None if method == "ngram" else str(draft_dir),
        adaptive=False,
    )
    llm = make_llm(
        target_dir,
        skip_tokenizer_init=True,
        max_num_seqs=64,
        max_model_len=64,
        kv_cache_tokens=4096,
        speculative=spec,
    )
    # A repetitive prompt gives the n-gram proposer something to propose (hybrid: for some
    # requests, depending on their first sampled token; the draft proposes for the rest).
    prompt = PROMPT if method == "draft" else [*PROMPT, *PROMPT[:2]]
    params = [
        SamplingParams(max_tokens=4, temperature=1.0, seed=seed, ignore_eos=True)
        for seed in range(NUM_SAMPLES)
    ]
    outs = llm.generate([prompt] * NUM_SAMPLES, params)
    stats = llm.engine.stats()
    # Both paths taken: accepted proposals, and rejections that draw from the residual.
    assert stats.num_draft_tokens > NUM_SAMPLES
    assert 50 < stats.num_accepted_tokens < 0.9 * stats.num_draft_tokens
    for position, expected in enumerate(exact_marginals(target, prompt, 3)):
        tokens = [o.token_ids[position] for o in outs]
        assert total_variation(tokens, expected) < 0.04, f"position {position}"
