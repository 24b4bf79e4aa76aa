"""Llama 3.2 Vision (`mllama`) through the engine: greedy fp32 output token-identical to
transformers' `generate` for batches mixing an image per prompt and text, submitted
together or staggered, chunked and under preemption; the warmed tile bucket; prefix
caching with the image in every block's hash; refusals by name. Every LLM is checked
idle (all KV blocks free) at teardown."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from engine import EngineConfig, SamplingParams, SpeculativeConfig, prefix_block_hashes
from engine.errors import UnsupportedModelError
from engine.multimodal import MultiModalProcessor
from tests.conftest import tiny_images

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

# (text, image sizes): 1x2, 2x1 and 1x1 tile grids (the last with a padding tile), an
# image token first, in the middle and last
REQUESTS = [
    ("hello <|image|> what is shown here?", [(30, 60)]),
    ("def fib(n): return n", []),
    ("<|image|> a tall one", [(64, 20)]),
    ("plain text, a longer prompt than the others to see how it goes", []),
    ("a small square at the end <|image|>", [(20, 20)]),
]

_models: dict[str, object] = {}


def hf_mllama_greedy(model_dir, text: str, sizes: list, max_new_tokens: int, seed: int = 0):
    """Greedy fp32 tokens of transformers' MllamaForConditionalGeneration.generate for one
    prompt (the processor's outputs for an image; the tokenizer's ids for text), no EOS."""
    from transformers import MllamaForConditionalGeneration

    model = _models.get(str(model_dir))
    if model is None:
        model = MllamaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        _models[str(model_dir)] = model.eval()
    processor = MultiModalProcessor.load(model_dir).hf_processor
    if sizes:
        inputs = processor(text=text, images=tiny_images(sizes, seed=seed), return_tensors="pt")
    else:
        inputs = {"input_ids": torch.tensor([processor.tokenizer.encode(text)])}
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def as_prompt(text: str, sizes: list, seed: int = 0):
    if not sizes:
        return text
    return {"prompt": text, "multi_modal_data": {"image": tiny_images(sizes, seed=seed)}}


@pytest.fixture(scope="module")
def expected(tiny_mllama_dir):
    return [hf_mllama_greedy(tiny_mllama_dir, t, s, GREEDY.max_tokens) for t, s in REQUESTS]


@pytest.mark.parametrize("name", ["engine.multimodal.cross_feed", "engine.models.mllama"])
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted >= 1 and result.failed == 0


def test_processor_gives_each_image_its_token_and_real_tiles(tiny_mllama_dir):
    processor = MultiModalProcessor.load(tiny_mllama_dir)
    assert processor.image_placeholder == "<|image|>"
    for size, tiles in (((30, 60), 2), ((64, 20), 2), ((20, 20), 1)):
        image = tiny_images([size])
        ids, mm = processor.process("look: <|image|> here", image)
        (start, length), pixels = mm.placeholder_ranges[0], mm.pixel_values[0]
        assert length == 1 and ids[start] == processor.image_token_id
        assert mm.cross_attention and pixels.shape == (tiles, 3, 28, 28)
        # the processor pads the tiles with zeros, as the engine does up to max_num_tiles
        out = processor.hf_processor(text="look: <|image|> here", images=image)
        assert not out["pixel_values"][0][0][tiles:].any()
        assert mm.aspect_ratio_ids == (int(out["aspect_ratio_ids"][0][0]),)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    ids, mm = processor.process_chat(messages, tiny_images([(30, 60)]))
    assert ids.count(processor.image_token_id) == 1 and mm.num_images == 1


def test_the_image_changes_the_output(tiny_mllama_dir, expected):
    # the tiny model's cross-attention gates are open: without its image a prompt differs
    text, sizes = REQUESTS[0]
    assert expected[0] != hf_mllama_greedy(tiny_mllama_dir, text, sizes, 12, seed=9)


def test_batch_of_images_and_text_matches_transformers(tiny_mllama_dir, make_llm, expected):
    llm = make_llm(tiny_mllama_dir, block_size=8)
    outs = llm.generate([as_prompt(t, s) for t, s in REQUESTS], GREEDY)
    assert [o.token_ids for o in outs] == expected
    feeder = llm.engine.image_feeder
    assert feeder.num_encoded_images == 3
    # the next step frees the slots of the finished requests
    llm.generate(["one more"], GREEDY)
    assert not feeder.encoded
    assert len(feeder.free_slots) == llm.engine.config.max_num_seqs


def test_staggered_requests_match_transformers(tiny_mllama_dir, make_llm, expected):
    llm = make_llm(tiny_mllama_dir, block_size=8)
    engine, processor = llm.engine, MultiModalProcessor.load(tiny_mllama_dir)
    results = {}
    for i, (text, sizes) in enumerate(REQUESTS):
        if sizes:
            ids, mm = processor.process(text, tiny_images(sizes))
            engine.add_request(f"r{i}", ids, GREEDY, multi_modal=mm)
        else:
            engine.add_request(f"r{i}", text, GREEDY)
        for _ in range(3):  # a few steps before the next request arrives
            for out in engine.step(stream=False):
                results[out.request_id] = out.token_ids
    while engine.has_unfinished:
        for out in engine.step(stream=False):
            results[out.request_id] = out.token_ids
    assert [results[f"r{i}"] for i in range(len(REQUESTS))] == expected


def test_chunked_prefill(tiny_mllama_dir, make_llm, expected):
    # 8-token chunks: the tokens before and after an image token in different steps
    llm = make_llm(tiny_mllama_dir, block_size=8, max_num_batched_tokens=8)
    outs = llm.generate([as_prompt(t, s) for t, s in REQUESTS], GREEDY)
    assert [o.token_ids for o in outs] == expected
    assert llm.engine.image_feeder.num_encoded_images == 3  # once each, at the first chunk


@pytest.mark.parametrize("enable_prefix_caching", [False, True])
def test_preemption_recomputes_images(tiny_mllama_dir, make_llm, expected, enable_prefix_caching):
    # 6 blocks of 8 tokens for 5 requests of 3-6 blocks each: forces preemption
    llm = make_llm(
        tiny_mllama_dir,
        block_size=8,
        kv_cache_tokens=48,
        max_model_len=48,
        enable_prefix_caching=enable_prefix_caching,
    )
    outs = llm.generate([as_prompt(t, s) for t, s in REQUESTS], GREEDY)
    assert llm.engine.stats().num_preemptions > 0
    assert [o.token_ids for o in outs] == expected


def test_warmed_tile_bucket_leaves_no_misses(tiny_mllama_dir, make_llm, expected):
    llm = make_llm(
        tiny_mllama_dir,
        block_size=8,
        max_model_len=64,
        max_num_seqs=4,
        max_num_batched_tokens=64,
        warmup=True,
        strict_shapes=True,
    )
    assert llm.engine.image_feeder.warmed == {2}  # every image runs as max_num_tiles tiles
    outs = llm.generate([as_prompt(t, s) for t, s in REQUESTS], GREEDY)
    assert [o.token_ids for o in outs] == expected
    assert llm.engine.stats().num_bucket_misses == 0


PREAMBLE = "a shared preamble of several words before the image: "
TEXT = PREAMBLE + "<|image|> and a question after it"


def test_every_block_hashes_the_image(tiny_mllama_dir):
    # tokens before the image attend to it too (uniformly): their KV depends on it
    processor = MultiModalProcessor.load(tiny_mllama_dir)
    ids, mm1 = processor.process(TEXT, tiny_images([(30, 60)], seed=5))
    ids2, mm2 = processor.process(TEXT, tiny_images([(30, 60)], seed=6))
    assert ids == ids2 and mm1.image_hashes != mm2.image_hashes
    assert mm1.placeholder_ranges[0][0] >= 8  # a full block before the image token
    h1 = prefix_block_hashes(ids, 8, extra_keys=mm1.block_extra_keys(len(ids), 8))
    h2 = prefix_block_hashes(ids, 8, extra_keys=mm2.block_extra_keys(len(ids), 8))
    text = prefix_block_hashes(ids, 8)
    assert all(len({a, b, c}) == 3 for a, b, c in zip(h1, h2, text, strict=True))


def test_prefix_cache_never_shares_across_images(tiny_mllama_dir, make_llm):
    llm = make_llm(tiny_mllama_dir, block_size=8)
    # the same text with two images, then the text before the image alone
    outs = [llm.generate([as_prompt(TEXT, [(30, 60)], seed)], GREEDY)[0] for seed in (5, 6)]
    plain = PREAMBLE + "and no image"
    text_only = llm.generate([plain], GREEDY)[0]
    assert [o.num_cached_tokens for o in (*outs, text_only)] == [0, 0, 0]
    assert outs[0].token_ids != outs[1].token_ids
    for seed, out in zip((5, 6), outs, strict=True):
        assert out.token_ids == hf_mllama_greedy(tiny_mllama_dir, TEXT, [(30, 60)], 12, seed)
    assert text_only.token_ids == hf_mllama_greedy(tiny_mllama_dir, plain, [], 12)


def test_same_image_same_text_hits_the_cache(tiny_mllama_dir, make_llm):
    llm = make_llm(tiny_mllama_dir, block_size=8)
    processor = MultiModalProcessor.load(tiny_mllama_dir)
    sizes = [(50, 40)]
    ids, _ = processor.process(TEXT, tiny_images(sizes, seed=6))
    prompt = as_prompt(TEXT, sizes, seed=6)
    out1 = llm.generate([prompt], GREEDY)[0]
    out2 = llm.generate([prompt], GREEDY)[0]
    assert out2.num_cached_tokens == (len(ids) - 1) // 8 * 8 > 0
    # its slot still held the image's keys and values: not encoded again
    assert llm.engine.image_feeder.num_encoded_images == 1
    assert out1.token_ids == out2.token_ids
    assert out1.token_ids == hf_mllama_greedy(tiny_mllama_dir, TEXT, sizes, 12, seed=6)


def test_bad_image_inputs_name_the_field(tiny_mllama_dir, tiny_llava_next_dir, make_llm):
    llm = make_llm(tiny_mllama_dir, block_size=8)
    two = tiny_images([(30, 60), (20, 20)])
    with pytest.raises(ValueError, match=r"at most one image per prompt"):
        llm.generate([{"prompt": "<|image|> <|image|>", "multi_modal_data": {"image": two}}])
    with pytest.raises(ValueError, match="placeholder"):
        llm.generate([{"prompt": "no image token", "multi_modal_data": {"image": two[0]}}])
    with pytest.raises(ValueError, match=r"prompt: contains the image token .* no images"):
        llm.generate(["an <|image|> without its image"], GREEDY)
    llava = MultiModalProcessor.load(tiny_llava_next_dir)
    ids, mm = llava.process("a <image>", two[:1])
    with pytest.raises(ValueError, match=r"multi_modal_data: processed for another kind"):
        llm.engine.add_request("llava-input", ids, GREEDY, multi_modal=mm)


def test_tensor_parallel_is_refused(tiny_mllama_dir):
    from engine.llm_engine import Engine

    config = EngineConfig(model=str(tiny_mllama_dir), device="cpu", tp_size=2)
    with pytest.raises(UnsupportedModelError, match=r"Llama 3.2 Vision \(mllama\)"):
        Engine(config)


def test_speculative_decoding_is_refused(tiny_mllama_dir):
    from engine.llm_engine import Engine

    config = EngineConfig(
        model=str(tiny_mllama_dir),
        device="cpu",
        speculative=SpeculativeConfig(method="ngram"),
    )
    with pytest.raises(ValueError, match=r"speculative decoding does not run Llama 3.2 Vision"):
        Engine(config)
