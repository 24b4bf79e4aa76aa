"""Greedy output is token-identical to transformers' generate (fp32) for every supported
family: prompts of different lengths submitted together, and staggered arrivals."""

from __future__ import annotations

import pytest

from engine import SamplingParams
from engine.errors import UnsupportedModelError
from engine.families import FAMILIES
from tests.conftest import hf_greedy, random_prompts

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


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_staggered_arrivals_match_transformers(family, tiny_model_dir, make_llm):
    """Requests join a running batch at different steps (continuous batching) and leave it
    at different steps (different max_tokens)."""
    model_dir = tiny_model_dir(family)
    prompts = random_prompts([9, 33, 5, 21, 48], seed=2)
    max_tokens = [14, 6, 10, 3, 8]
    engine = make_llm(model_dir, skip_tokenizer_init=True, block_size=8).engine
    arrivals = {0: [0, 1], 2: [2], 3: [3], 7: [4]}  # step -> prompts arriving
    results = {}
    step = 0
    while step <= max(arrivals) or engine.has_unfinished:
        for i in arrivals.get(step, []):
            params = SamplingParams(max_tokens=max_tokens[i], temperature=0.0, ignore_eos=True)
            engine.add_request(f"r{i}", prompts[i], params)
        for out in engine.step(stream=False):
            results[out.request_id] = out
        step += 1
    for i, prompt in enumerate(prompts):
        assert results[f"r{i}"].token_ids == hf_greedy(model_dir, prompt, max_tokens[i])


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
