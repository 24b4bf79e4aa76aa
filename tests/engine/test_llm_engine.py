"""Engine behaviour through the offline API: preemption, prefix reuse, stops, seeds,
logprobs and input errors. Every LLM is checked idle (all blocks free) at teardown."""

from __future__ import annotations

import pytest

from engine import EmptyPromptError, PromptTooLongError, SamplingParams
from tests.conftest import hf_greedy, random_prompts

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def test_preemption_under_tiny_block_pool_keeps_greedy_output(tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("llama")
    prompts = random_prompts([20, 30, 25, 18, 27, 22], seed=3)
    # 12 blocks of 8 tokens = 96 slots for 6 requests needing ~45 each: forces preemption.
    llm = make_llm(
        model_dir, skip_tokenizer_init=True, block_size=8, kv_cache_tokens=96, max_model_len=64
    )
    outs = llm.generate(prompts, GREEDY)
    assert llm.engine.stats().num_preemptions > 0
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, 24)


def test_prefix_reuse_computes_only_the_new_part(tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("llama")
    shared = random_prompts([64], seed=4)[0]
    llm = make_llm(model_dir, skip_tokenizer_init=True, block_size=16)
    first = llm.generate([[*shared, 5, 6, 7]], GREEDY)[0]
    computed_before = llm.engine.stats().num_prefill_tokens
    second_prompt = [*shared, 9, 10]
    second = llm.generate([second_prompt], GREEDY)[0]
    computed = llm.engine.stats().num_prefill_tokens - computed_before
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 64
    assert computed == len(second_prompt) - 64
    assert second.token_ids == hf_greedy(model_dir, second_prompt, 24)


def test_chunked_prefill_matches_transformers(tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("qwen2")
    prompts = random_prompts([150, 40], seed=5)
    llm = make_llm(model_dir, skip_tokenizer_init=True, max_num_batched_tokens=32)
    outs = llm.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(model_dir, prompt, 24)


def test_max_tokens_and_stop_token_ids(tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("llama")
    llm = make_llm(model_dir, skip_tokenizer_init=True)
    prompt = random_prompts([10], seed=6)[0]
    reference = hf_greedy(model_dir, prompt, 24)
    out = llm.generate([prompt], SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))[0]
    assert out.token_ids == reference[:5] and out.finish_reason == "length"
    stop_id = reference[7]
    first = reference.index(stop_id)
    out = llm.generate(
        [prompt],
        SamplingParams(max_tokens=24, temperature=0, stop_token_ids=[stop_id], ignore_eos=True),
    )[0]
    assert out.token_ids == reference[: first + 1] and out.finish_reason == "stop"
    assert out.stop_reason == stop_id


def test_eos_stops_unless_ignored(tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("llama")
    llm = make_llm(model_dir, skip_tokenizer_init=True)
    prompt = random_prompts([10], seed=6)[0]
    reference = hf_greedy(model_dir, prompt, 24)
    eos = reference[3]
    llm.engine.stop_rule = llm.engine.stop_rule.__class__(frozenset({eos}), 1024)
    out = llm.generate([prompt], SamplingParams(max_tokens=24, temperature=0))[0]
    assert out.token_ids[-1] == eos and out.finish_reason == "stop"
    out = llm.generate([prompt], GREEDY)[0]
    assert out.token_ids == reference


def test_stop_strings_are_excluded_and_never_leak(tiny_model_dir, make_llm):
    from engine import Engine

    model_dir = tiny_model_dir("llama")
    llm = make_llm(model_dir)
    prompt = "def step(self, stream"
    free = llm.generate([prompt], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    text = free[0].text
    assert len(text) > 6
    stop = text[3:6]
    out = llm.generate(
        [prompt],
        SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=[stop, "\x00never"]),
    )[0]
    assert out.text == text[: text.index(stop)] and out.finish_reason == "stop"
    assert out.stop_reason == stop
    # Streaming: no intermediate output may show any part of the stop string.
    engine: Engine = llm.engine
    engine.add_request(
        "s", prompt, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=[stop])
    )
    seen = []
    while engine.has_unfinished:
        seen += [o.text for o in engine.step()]
    assert all(stop not in t for t in seen)
    assert all(text[: text.index(stop)].startswith(t) for t in seen)
    # Deltas (the serving path): the text so far never shows any part of the stop string,
    # and the pieces add up to the stopped text.
    engine.add_request(
        "d", prompt, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=[stop])
    )
    so_far, token_ids = "", []
    while engine.has_unfinished:
        for delta in engine.step_deltas():
            so_far += delta.text
            token_ids += delta.token_ids
            assert text[: text.index(stop)].startswith(so_far)
    assert so_far == out.text and token_ids == out.token_ids and delta.stop_reason == stop


def test_seeded_sampling_is_reproducible_regardless_of_batch(tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("llama")
    llm = make_llm(model_dir, skip_tokenizer_init=True)
    prompt = random_prompts([12], seed=7)[0]
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=42, ignore_eos=True)
    alone = llm.generate([prompt], seeded)[0].token_ids
    others = random_prompts([5, 30, 9], seed=8)
    batch = llm.generate(
        [*others, prompt],
        [GREEDY, GREEDY, SamplingParams(max_tokens=16, temperature=0.7, ignore_eos=True), seeded],
    )[-1].token_ids
    assert alone == batch
    other_seed = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=43, ignore_eos=True)
    assert llm.generate([prompt], other_seed)[0].token_ids != alone


def test_logprobs_match_the_model_distribution(tiny_model_dir, make_llm):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("llama")
    llm = make_llm(model_dir, skip_tokenizer_init=True)
    prompt = random_prompts([8], seed=9)[0]
    out = llm.generate(
        [prompt], SamplingParams(max_tokens=3, temperature=0, logprobs=4, ignore_eos=True)
    )[0]
    assert len(out.logprobs) == 3
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.inference_mode():
        logits = ref(torch.tensor([prompt + out.token_ids])).logits[0]
    for i, lp in enumerate(out.logprobs):
        expected = logits[len(prompt) - 1 + i].log_softmax(-1)
        assert lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(expected[lp.token_id].item(), abs=1e-4)
        assert len(lp.top) == 4
        top_ids = expected.topk(4).indices.tolist()
        assert list(lp.top) == top_ids
        assert lp.top[top_ids[0]] == pytest.approx(expected[top_ids[0]].item(), abs=1e-4)


def test_prompt_errors(tiny_model_dir, make_llm):
    llm = make_llm(tiny_model_dir("llama"), skip_tokenizer_init=True, max_model_len=32)
    with pytest.raises(EmptyPromptError):
        llm.generate([[]], GREEDY)
    with pytest.raises(PromptTooLongError, match="32 tokens; at most 31"):
        llm.generate([list(range(3, 35))], GREEDY)
    with pytest.raises(ValueError, match=r"token ids must be integers in \[0, 512\)"):
        llm.generate([[5, 9999]], GREEDY)
    with pytest.raises(ValueError, match="no tokenizer"):
        llm.generate(["text"], GREEDY)
    with pytest.raises(ValueError, match="params has 2 entries"):
        llm.generate([[5], [6], [7]], [GREEDY, GREEDY])


def test_engine_config_errors_name_the_field(tiny_model_dir):
    from engine import LLM

    model_dir = str(tiny_model_dir("llama"))
    with pytest.raises(ValueError, match=r"device must be one of \['auto', 'cpu'"):
        LLM(model_dir, device="tpu")
    with pytest.raises(ValueError, match="block_size must be one of"):
        LLM(model_dir, block_size=7)
    with pytest.raises(ValueError, match="max_model_len 5000 exceeds"):
        LLM(model_dir, device="cpu", skip_tokenizer_init=True, max_model_len=5000)
    with pytest.raises(ValueError, match="KV cache holds 64 tokens, fewer than max_model_len"):
        LLM(
            model_dir, device="cpu", skip_tokenizer_init=True, kv_cache_tokens=64, max_model_len=128
        )
