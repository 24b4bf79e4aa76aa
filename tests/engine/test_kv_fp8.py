"""The FP8 KV cache (kv_cache_dtype="fp8"): K and V stored as float8 e4m3 (1 byte an
element, so twice bf16's tokens and four times fp32's in the same memory), attention
computed in the model's dtype. Greedy output equals transformers' own generate over keys
and values rounded through fp8, with paged attention, chunked prefill, prefix reuse,
preemption, speculative decoding and tp=2; the engine's forward stays free of dynamic
shapes. Every LLM is checked idle (all blocks free) at teardown (make_llm)."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from engine import LLM, SamplingParams, SpeculativeConfig
from engine.attention import KV_FP8_DTYPE, quantize_kv
from engine.executor import LocalExecutor
from engine.loader import KVSpec
from tests.conftest import assert_engine_idle, random_prompts, tiny_config

MAX_NEW = 16
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
FP8_REFERENCE_ATTENTION = "fp8_kv_reference"


def fp8_reference_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA over keys and values rounded through the cache's fp8."""
    key = quantize_kv(key).to(key.dtype)
    value = quantize_kv(value).to(value.dtype)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(FP8_REFERENCE_ATTENTION, fp8_reference_attention)
_reference_models: dict[str, torch.nn.Module] = {}


def fp8_greedy(model_dir, prompt_ids: list[int], max_new_tokens: int = MAX_NEW) -> list[int]:
    """The reference: transformers' generate (fp32, greedy) with fp8-rounded K and V."""
    model = _reference_models.get(str(model_dir))
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=FP8_REFERENCE_ATTENTION
        ).eval()
        _reference_models[str(model_dir)] = model
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models are bound by per-op overhead: a second thread only adds barriers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama")


def fp8_llm(make_llm, model_dir, **kwargs):
    return make_llm(model_dir, skip_tokenizer_init=True, kv_cache_dtype="fp8", **kwargs)


# -- memory --------------------------------------------------------------------------------
def test_kv_spec_counts_one_byte_an_element():
    config = tiny_config("llama")  # 2 layers x 2 KV heads x head_dim 16
    per_token = {
        (dtype, kv): KVSpec.from_config(config, dtype, kv_cache_dtype=kv).bytes_per_token
        for dtype in (torch.float32, torch.bfloat16)
        for kv in ("auto", "fp8")
    }
    assert per_token[torch.float32, "fp8"] == per_token[torch.bfloat16, "fp8"] == 2 * 2 * 2 * 16
    assert per_token[torch.bfloat16, "auto"] == 2 * per_token[torch.bfloat16, "fp8"]
    assert per_token[torch.float32, "auto"] == 4 * per_token[torch.float32, "fp8"]
    spec = KVSpec.from_config(config, torch.bfloat16, tp_size=2, kv_cache_dtype="fp8")
    assert (spec.num_kv_heads, spec.dtype, spec.storage_dtype) == (1, torch.bfloat16, KV_FP8_DTYPE)
    with pytest.raises(ValueError, match=r"kv_cache_dtype must be one of \['auto', 'fp8'\]"):
        KVSpec.from_config(config, torch.float32, kv_cache_dtype="int8")


class FixedMemoryExecutor(LocalExecutor):
    """The local executor on a device with a fixed amount of free memory (the host's
    varies from run to run), so two engines size their caches from the same bytes."""

    BUDGET_BYTES = 1 << 20

    def available_kv_bytes(self, memory_fraction: float) -> int:
        return int(self.BUDGET_BYTES * memory_fraction)


def fixed_memory_executor(config, model_path):
    return FixedMemoryExecutor(
        model_path,
        config.device,
        config.dtype,
        config.block_size,
        kv_cache_dtype=config.kv_cache_dtype,
    )


@pytest.mark.parametrize(("dtype", "ratio"), [("bfloat16", 2), ("float32", 4)])
def test_fp8_fits_more_blocks_in_the_same_memory(model_dir, dtype, ratio):
    blocks, kv_bytes = {}, {}
    for kv in ("auto", "fp8"):
        llm = LLM(
            str(model_dir),
            executor_factory=fixed_memory_executor,
            device="cpu",
            dtype=dtype,
            kv_cache_dtype=kv,
            kv_cache_tokens=None,
            kv_cache_memory_fraction=1.0,
            max_num_seqs=64,
            max_model_len=1024,
            skip_tokenizer_init=True,
            warmup=False,
        )
        try:
            runner = llm.engine.executor.runner
            stored = KV_FP8_DTYPE if kv == "fp8" else getattr(torch, dtype)
            assert runner.kv_caches[0][0].dtype == stored
            blocks[kv] = llm.engine.block_manager.num_usable_blocks
            block_bytes = llm.engine.config.block_size * runner.kv_spec.bytes_per_token
            kv_bytes[kv] = blocks[kv] * block_bytes
            # the pools hold exactly what KVSpec counts (+ the padding block)
            pool_bytes = sum(t.nbytes for pair in runner.kv_caches for t in pair)
            assert pool_bytes == (blocks[kv] + 1) * block_bytes
            out = llm.generate(random_prompts([9], seed=1), GREEDY)[0]
            assert len(out.token_ids) == MAX_NEW  # a bf16 model computes over fp8 too
            assert_engine_idle(llm.engine)
        finally:
            llm.shutdown()
    assert blocks["fp8"] == ratio * blocks["auto"]
    assert kv_bytes["fp8"] == kv_bytes["auto"] == FixedMemoryExecutor.BUDGET_BYTES


# -- greedy output ---------------------------------------------------------------------------
def test_greedy_matches_transformers_over_fp8_rounded_kv(model_dir, make_llm):
    prompts = random_prompts([5, 40, 23, 70], seed=11)
    llm = fp8_llm(make_llm, model_dir, max_num_batched_tokens=32)  # the 70 is chunked
    outs = llm.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == fp8_greedy(model_dir, prompt)


def test_fp8_changes_the_numbers_but_not_the_greedy_path_here(model_dir, make_llm):
    """The cache really is rounded: logprobs move off the fp32 cache's; tokens do not."""
    prompt = random_prompts([30], seed=12)[0]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=0)
    exact = make_llm(model_dir, skip_tokenizer_init=True).generate([prompt], params)[0]
    rounded = fp8_llm(make_llm, model_dir).generate([prompt], params)[0]
    assert rounded.token_ids == exact.token_ids
    exact_lp = [lp.logprob for lp in exact.logprobs]
    rounded_lp = [lp.logprob for lp in rounded.logprobs]
    assert exact_lp != rounded_lp
    assert rounded_lp == pytest.approx(exact_lp, abs=0.05)


def test_prefix_reuse_reads_the_cached_fp8_blocks(model_dir, make_llm):
    shared = random_prompts([64], seed=4)[0]
    llm = fp8_llm(make_llm, model_dir, block_size=16)
    llm.generate([[*shared, 5, 6, 7]], GREEDY)
    second_prompt = [*shared, 9, 10]
    second = llm.generate([second_prompt], GREEDY)[0]
    assert second.num_cached_tokens == 64
    assert second.token_ids == fp8_greedy(model_dir, second_prompt)


def test_preemption_keeps_greedy_output(model_dir, make_llm):
    prompts = random_prompts([20, 30, 25, 18, 27, 22], seed=3)
    # 12 blocks of 8 tokens = 96 slots for 6 requests needing ~45 each: forces preemption.
    llm = fp8_llm(make_llm, model_dir, block_size=8, kv_cache_tokens=96, max_model_len=64)
    outs = llm.generate(prompts, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))
    assert llm.engine.stats().num_preemptions > 0
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.token_ids == fp8_greedy(model_dir, prompt, 24)


@pytest.mark.parametrize("method", ["draft", "ngram"])
def test_speculative_greedy_equals_plain_greedy(model_dir, make_llm, tmp_path, method):
    prompts = random_prompts([7, 30, 16, 41], seed=41)
    plain = [o.token_ids for o in fp8_llm(make_llm, model_dir).generate(prompts, GREEDY)]
    draft_dir = None
    if method == "draft":  # a copy of the target: every greedy proposal accepted
        draft_dir = shutil.copytree(model_dir, tmp_path / "draft")
    spec = SpeculativeConfig(
        method=method,
        draft_model=str(draft_dir) if draft_dir else None,
        num_speculative_tokens=4,
        adaptive=False,
    )
    llm = fp8_llm(make_llm, model_dir, speculative=spec)
    assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == plain
    stats = llm.engine.stats()
    assert stats.num_verify_steps > 0
    if method == "draft":
        draft_runner = llm.engine.strategy.draft.runner
        assert draft_runner.kv_caches[0][0].dtype == KV_FP8_DTYPE
        assert stats.acceptance_rate > 0.9


def test_tp2_matches_tp1(model_dir, make_llm):
    import ray

    from cluster.ray_env import ensure_ray

    prompts = random_prompts([7, 30, 16], seed=21)
    reference = [o.token_ids for o in fp8_llm(make_llm, model_dir).generate(prompts, GREEDY)]
    owns_ray = ensure_ray(num_cpus=4)
    llm = None
    try:
        llm = LLM(
            str(model_dir),
            tp_size=2,
            kv_cache_dtype="fp8",
            skip_tokenizer_init=True,
            device="cpu",
            dtype="float32",
            kv_cache_tokens=2048,
            warmup=False,
        )
        assert llm.engine.executor.kv_spec.num_kv_heads == 1  # of the model's 2
        assert llm.engine.executor.kv_spec.storage_dtype == KV_FP8_DTYPE
        assert [o.token_ids for o in llm.generate(prompts, GREEDY)] == reference
        assert_engine_idle(llm.engine)
    finally:
        if llm is not None:
            llm.shutdown()
        if owns_ray:
            ray.shutdown()


# -- static shapes ---------------------------------------------------------------------------
def test_engine_forward_with_fp8_cache_audits_clean(model_dir, make_llm):
    from engine.audit import audit_forward
    from engine.model_input import dummy_model_input

    llm = fp8_llm(make_llm, model_dir, max_num_seqs=4, max_model_len=256, kv_cache_tokens=1024)
    engine = llm.engine
    runner = engine.executor.runner
    shapes = [engine.shaper.prefill_shape(2, 16, 1), engine.shaper.decode_shape(2, 2)]
    steps = [runner.prepare_inputs(dummy_model_input(shape)) for shape in shapes]

    def run() -> None:
        with torch.inference_mode():
            for inputs in steps:
                runner.run_forward(**inputs)

    report = audit_forward(runner.model, run)
    assert report.is_clean, report.format()
