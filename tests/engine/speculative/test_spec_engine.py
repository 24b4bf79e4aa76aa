"""Speculative decoding through the engine: greedy output identical to the target alone for
both proposers (staggered arrivals, preemption, adaptive on and off), stops and max_tokens
landing exactly, logprobs unchanged, every block free afterwards (make_llm checks)."""

from __future__ import annotations

import pytest

from engine import SamplingParams, SpeculativeConfig
from tests.conftest import random_prompts

MAX_NEW = 20
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
PROMPT_LENS = [5, 23, 41, 12, 30]


def spec(kind: str, drafts: dict, k: int = 4, adaptive: bool = False) -> SpeculativeConfig:
    if kind == "ngram":
        return SpeculativeConfig(method="ngram", num_speculative_tokens=k, adaptive=adaptive)
    if kind == "hybrid":  # prompt lookup, and the random draft where it finds nothing
        return SpeculativeConfig(
            method="hybrid", draft_model=str(drafts["random"]), num_speculative_tokens=k
        )
    return SpeculativeConfig(
        draft_model=str(drafts[kind]), num_speculative_tokens=k, adaptive=adaptive
    )


@pytest.fixture
def drafts(copy_draft_dir, random_draft_dir):
    return {"copy": copy_draft_dir, "random": random_draft_dir}


def generate_staggered(llm, prompts, params, every: int = 3):
    """Prompt i arrives at step i * every; returns token ids in prompt order."""
    engine = llm.engine
    done = {}
    step = 0
    while len(done) < len(prompts):
        if step % every == 0 and step // every < len(prompts):
            i = step // every
            engine.add_request(f"s{i}", prompts[i], params)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.token_ids
        step += 1
    return [done[f"s{i}"] for i in range(len(prompts))]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """Greedy outputs of the target alone."""
    from engine import LLM

    llm = LLM(
        str(tiny_model_dir("llama")),
        device="cpu",
        dtype="float32",
        skip_tokenizer_init=True,
        kv_cache_tokens=4096,
        warmup=False,
    )
    prompts = random_prompts(PROMPT_LENS, seed=31)
    outs = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    llm.shutdown()
    return prompts, outs


@pytest.mark.parametrize(
    ("kind", "adaptive"),
    [
        ("ngram", False),
        ("copy", False),
        ("random", False),
        ("hybrid", False),
        ("copy", True),
        ("random", True),
    ],
)
def test_greedy_output_is_the_targets(kind, adaptive, target_dir, drafts, reference, make_llm):
    prompts, expected = reference
    llm = make_llm(
        target_dir,
        skip_tokenizer_init=True,
        kv_cache_tokens=4096,
        speculative=spec(kind, drafts, adaptive=adaptive),
    )
    assert generate_staggered(llm, prompts, GREEDY) == expected
    stats = llm.engine.stats()
    assert stats.num_generated_tokens == MAX_NEW * len(prompts)
    assert stats.num_verify_steps > 0
    if kind == "copy":
        assert stats.acceptance_rate > 0.95
        assert stats.num_steps < 0.5 * MAX_NEW * len(prompts)  # several tokens per step
    if kind == "random":
        assert stats.acceptance_rate < 0.5
    if kind == "random" and adaptive:  # low acceptance turns speculation off
        assert stats.num_verify_steps < stats.num_steps // 2
    assert 0 <= stats.acceptance_rate <= 1 and stats.proposer_s > 0


def test_preemption_and_rollback_keep_greedy_output(target_dir, copy_draft_dir, make_llm):
    from tests.conftest import hf_greedy

    prompts = random_prompts([20, 30, 25, 18, 27, 22], seed=3)
    llm = make_llm(
        target_dir,
        skip_tokenizer_init=True,
        block_size=8,
        kv_cache_tokens=96,
        max_model_len=64,
        speculative=SpeculativeConfig(draft_model=str(copy_draft_dir), adaptive=False),
    )
    outs = llm.generate(prompts, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    assert llm.engine.stats().num_preemptions > 0
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == hf_greedy(target_dir, prompt, 24)


@pytest.mark.parametrize("kind", ["ngram", "copy"])
def test_max_tokens_stop_ids_and_eos_land_exactly(kind, target_dir, drafts, reference, make_llm):
    prompts, expected = reference
    prompt, full = prompts[1], expected[1]
    llm = make_llm(target_dir, skip_tokenizer_init=True, speculative=spec(kind, drafts))
    for max_tokens in (1, 2, 3, 7):
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        out = llm.generate([prompt], params)[0]
        assert out.token_ids == full[:max_tokens] and out.finish_reason == "length"
    stop_id = full[9]
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0, stop_token_ids=[stop_id])
    out = llm.generate([prompt], params)[0]
    first = full.index(stop_id)
    assert out.token_ids == full[: first + 1] and out.stop_reason == stop_id
    eos = full[5]
    llm.engine.stop_rule = llm.engine.stop_rule.__class__(frozenset({eos}), 1024)
    out = llm.generate([prompt], SamplingParams(max_tokens=MAX_NEW, temperature=0))[0]
    assert out.token_ids == full[: full.index(eos) + 1] and out.finish_reason == "stop"


def test_stop_strings_land_exactly(target_dir, copy_draft_dir, make_llm):
    plain = make_llm(target_dir)
    prompt = "def step(self, stream"
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    text = plain.generate([prompt], params)[0].text
    stop = text[5:8]
    stopped = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=[stop])
    llm = make_llm(
        target_dir, speculative=SpeculativeConfig(draft_model=str(copy_draft_dir), adaptive=False)
    )
    assert llm.generate([prompt], params)[0].text == text
    out = llm.generate([prompt], stopped)[0]
    assert out.text == text[: text.index(stop)] and out.stop_reason == stop
    expected_ids = plain.generate([prompt], stopped)[0].token_ids
    assert out.token_ids == expected_ids
    # Streaming: no intermediate output shows any part of the stop string.
    llm.engine.add_request("s", prompt, stopped)
    seen = []
    while llm.engine.has_unfinished:
        seen += [o.text for o in llm.engine.step()]
    assert all(text[: text.index(stop)].startswith(t) for t in seen)


def test_logprobs_match_the_target_alone(target_dir, copy_draft_dir, reference, make_llm):
    prompts, _ = reference
    params = SamplingParams(max_tokens=8, temperature=0, logprobs=3, ignore_eos=True)
    plain = make_llm(target_dir, skip_tokenizer_init=True).generate(prompts[:2], params)
    llm = make_llm(
        target_dir,
        skip_tokenizer_init=True,
        speculative=SpeculativeConfig(draft_model=str(copy_draft_dir), adaptive=False),
    )
    for ours, theirs in zip(llm.generate(prompts[:2], params), plain, strict=True):
        assert ours.token_ids == theirs.token_ids
        for a, b in zip(ours.logprobs, theirs.logprobs, strict=True):
            assert a.token_id == b.token_id and list(a.top) == list(b.top)
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_seeded_sampling_reproduces(target_dir, random_draft_dir, make_llm):
    prompts = random_prompts([9, 17], seed=5)
    llm = make_llm(
        target_dir,
        skip_tokenizer_init=True,
        speculative=SpeculativeConfig(draft_model=str(random_draft_dir), adaptive=False),
    )
    params = SamplingParams(max_tokens=12, temperature=0.9, top_k=50, seed=11, ignore_eos=True)
    first = [o.token_ids for o in llm.generate(prompts, params)]
    assert [o.token_ids for o in llm.generate(prompts, params)] == first
