"""Start-up with speculation: a draft with another vocabulary is refused with a clear error,
and after warmup (verify and draft shapes included) no step runs an unwarmed shape."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from engine import LLM, SamplingParams, SpeculativeConfig
from engine.speculative.adaptive import StepCosts
from tests.conftest import random_prompts

ARGS = dict(device="cpu", dtype="float32", skip_tokenizer_init=True, warmup=False)


def with_draft(path) -> SpeculativeConfig:
    return SpeculativeConfig(draft_model=str(path))


def test_draft_with_another_tokenizer_is_refused(target_dir, tmp_path):
    draft = tmp_path / "swapped"
    shutil.copytree(target_dir, draft)
    spec_file = draft / "tokenizer.json"
    spec = json.loads(spec_file.read_text())
    vocab = spec["model"]["vocab"]
    a, b = (t for t, i in vocab.items() if i in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(
        ValueError, match=r"does not share the target model .* tokenizer: id 300 is"
    ):
        LLM(str(target_dir), speculative=with_draft(draft), **ARGS)


def test_draft_with_another_vocab_size_is_refused(target_dir, tiny_model_dir):
    draft = tiny_model_dir("llama", vocab_size=256)
    with pytest.raises(ValueError, match=f"draft model {draft} has vocab_size 256 but the target"):
        LLM(str(target_dir), speculative=with_draft(draft), **ARGS)


def test_draft_without_a_tokenizer_is_refused(target_dir, tmp_path):
    draft = tmp_path / "bare"
    draft.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(target_dir / name, draft / name)
    with pytest.raises(ValueError, match="has no tokenizer, so its vocabulary cannot be checked"):
        LLM(str(target_dir), speculative=with_draft(draft), **ARGS)


@pytest.mark.parametrize("method", ["draft", "ngram"])
def test_no_bucket_misses_after_warmup(method, target_dir, random_draft_dir, make_llm):
    """Adaptive k (plain decode and every verify length: the random draft's acceptance is
    low), chunked draft catch-up, preemption, mixed sampling: with strict_shapes any
    unwarmed target or draft shape would raise."""
    spec = SpeculativeConfig(
        method=method,
        num_speculative_tokens=4,
        draft_model=str(random_draft_dir) if method == "draft" else None,
    )
    llm = make_llm(
        target_dir,
        skip_tokenizer_init=True,
        warmup=True,
        strict_shapes=True,
        kv_cache_tokens=256,
        max_num_seqs=4,
        max_model_len=96,
        block_size=8,
        max_num_batched_tokens=64,
        speculative=spec,
    )
    engine = llm.engine
    assert engine.stats().num_bucket_misses == 0
    # A tiny random draft costs about as much as the tiny target, so the calibrated rule
    # (rightly) never speculates with it: pretend it is cheap.
    engine.strategy.costs = StepCosts(((1, 1.0), (100, 1.1)), draft_points=((1, 0.05), (100, 0.05)))
    rng = random.Random(0)
    for i in range(24):
        n = rng.randint(1, 60)
        prompt = random_prompts([n], seed=i)[0] if i % 3 else [7, 8, 9] * (n // 3 + 1)
        temperature = 0.0 if i % 2 else 0.8
        params = SamplingParams(
            max_tokens=rng.randint(1, 96 - len(prompt)), temperature=temperature, ignore_eos=True
        )
        engine.add_request(f"r{i}", prompt, params)
        for _ in range(rng.randint(0, 6)):
            engine.step()
    while engine.has_unfinished:
        engine.step()
    stats = engine.stats()
    assert stats.num_bucket_misses == 0 and stats.num_verify_steps > 0
    assert stats.num_preemptions > 0
