"""int8/int4 weights end to end through LLM.generate on the CPU: paged attention, greedy
determinism, prefix reuse and speculative decoding with the quantized model, the bundled
model's agreement with its unquantized self (reported), and the config's errors."""

from __future__ import annotations

import pytest

from engine import EngineConfig, SamplingParams, SpeculativeConfig
from engine.assets import default_model_path
from engine.quant import PackedLinear, QuantizedEmbedding
from tests.conftest import random_prompts

MAX_NEW = 16
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
QUANTIZATIONS = ["int8", "int4"]
CODE_PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n\ndef main():\n",
    "class Stack:\n    def __init__(self):\n",
    "for i, line in enumerate(lines):\n",
]


def bundled_model_dir():
    return default_model_path("pycoder")


def runner_model(llm):
    return llm.engine.executor.runner.model


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_bundled_model_agrees_with_its_unquantized_self(quantization, make_llm, record_property):
    """Free-running greedy agreement, position by position (a token that differs sends
    the rest elsewhere, so this understates per-step agreement). Reported, not required
    to be 100%: the floor only catches a broken quantization (unrelated text agrees ~0%)."""
    path = bundled_model_dir()
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    reference = [o.token_ids for o in make_llm(path).generate(CODE_PROMPTS, params)]
    llm = make_llm(path, quantization=quantization)
    model = runner_model(llm)
    assert isinstance(model.lm_head, PackedLinear)
    assert isinstance(model.get_input_embeddings(), QuantizedEmbedding)
    outs = [o.token_ids for o in llm.generate(CODE_PROMPTS, params)]
    same = sum(
        a == b
        for ref, out in zip(reference, outs, strict=True)
        for a, b in zip(ref, out, strict=True)
    )
    agreement = same / sum(map(len, reference))
    record_property(f"{quantization}_agreement", agreement)
    print(f"{quantization}: greedy agreement {agreement:.1%} over {len(CODE_PROMPTS)} prompts")
    assert agreement >= (0.5 if quantization == "int8" else 0.2)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_greedy_is_deterministic_and_batch_independent(quantization, tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("llama")
    prompts = random_prompts([5, 23, 41], seed=7)
    llm = make_llm(model_dir, skip_tokenizer_init=True, quantization=quantization)
    batched = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    again = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    one_by_one = [llm.generate([p], GREEDY)[0].token_ids for p in prompts]
    assert batched == again == one_by_one
    assert all(len(t) == MAX_NEW for t in batched)


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_prefix_reuse_hits_with_quantized_weights(quantization, tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("llama")
    shared = random_prompts([64], seed=4)[0]
    llm = make_llm(model_dir, skip_tokenizer_init=True, quantization=quantization)
    first = llm.generate([[*shared, 5, 6, 7]], GREEDY)[0]
    second_prompt = [*shared, 9, 10]
    second = llm.generate([second_prompt], GREEDY)[0]
    assert (first.num_cached_tokens, second.num_cached_tokens) == (0, 64)
    cold = make_llm(
        model_dir, skip_tokenizer_init=True, quantization=quantization, enable_prefix_caching=False
    )
    assert second.token_ids == cold.generate([second_prompt], GREEDY)[0].token_ids


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_speculative_greedy_equals_plain_greedy(quantization, method, tiny_model_dir, make_llm):
    model_dir = tiny_model_dir("llama")
    prompts = random_prompts([5, 23, 41, 12], seed=31)
    # repeats give the n-gram proposer something to find
    prompts = [[*p, *p[:6]] for p in prompts]
    plain = make_llm(model_dir, skip_tokenizer_init=True, quantization=quantization)
    expected = [o.token_ids for o in plain.generate(prompts, GREEDY)]
    if method == "ngram":
        speculative = SpeculativeConfig(method="ngram", num_speculative_tokens=4, adaptive=False)
    else:  # the unquantized model drafts for its quantized self
        speculative = SpeculativeConfig(
            draft_model=str(model_dir), num_speculative_tokens=4, adaptive=False
        )
    llm = make_llm(
        model_dir, skip_tokenizer_init=True, quantization=quantization, speculative=speculative
    )
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == expected
    stats = llm.engine.stats()
    assert stats.num_verify_steps > 0
    if method == "draft":
        assert stats.acceptance_rate > 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantization": "int3"}, "quantization must be one of [None, 'fp8', 'int8', 'int4']"),
        ({"quantization": "fp8", "device": "cpu"}, "quantization 'fp8' does not run on device"),
        ({"kv_cache_dtype": "int8"}, "kv_cache_dtype must be one of ['auto', 'fp8']"),
        ({"quantization": "fp8", "device": "hpu"}, "'fp8' on hpu needs quantization_stats"),
        ({"quantization": "int8", "quantization_stats": "/x"}, "quantization_stats is only read"),
    ],
)
def test_config_errors_name_the_field(changes, message):
    with pytest.raises(ValueError) as info:
        EngineConfig(**changes)
    assert message in str(info.value)


def test_fp8_error_says_which_devices_run_what():
    with pytest.raises(ValueError) as info:
        EngineConfig(quantization="fp8", device="cpu")
    assert "it runs on ['hpu', 'cuda']" in str(info.value)
    assert "allowed quantization on 'cpu': [None, 'int8', 'int4']" in str(info.value)


def test_llm_refuses_fp8_weights_on_the_cpu(tiny_model_dir, make_llm):
    with pytest.raises(ValueError, match="quantization 'fp8' does not run on device 'cpu'"):
        make_llm(tiny_model_dir("llama"), skip_tokenizer_init=True, quantization="fp8")
