"""Llava-NeXT through the engine: greedy fp32 output token-identical to transformers'
`generate` for batches mixing images and text, submitted together or staggered, chunked
through an image and under preemption; warmed patch buckets; refusals by name. Every LLM
is checked idle (all KV blocks free) at teardown."""

from __future__ import annotations

import pytest

from engine import EngineConfig, SamplingParams, SpeculativeConfig
from engine.errors import UnsupportedModelError
from engine.multimodal import MultiModalProcessor
from tests.conftest import tiny_images
from tests.engine.multimodal.reference import hf_llava_greedy

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

# (text, image sizes): images of different anyres grids (2x1, 1x2, 2x2 tiles)
REQUESTS = [
    ("USER: <image>\nWhat is shown?", [(30, 60)]),
    ("def fib(n): return n", []),
    ("compare <image> with <image> now", [(50, 40), (20, 20)]),
    ("USER: <image> tall one", [(64, 20)]),
    ("plain text, a longer prompt than the others to see how it goes", []),
]


def as_prompt(text: str, sizes: list, seed: int = 0):
    if not sizes:
        return text
    return {"prompt": text, "multi_modal_data": {"image": tiny_images(sizes, seed=seed)}}


def reference(model_dir, text: str, sizes: list, seed: int = 0) -> list[int]:
    processor = MultiModalProcessor.load(model_dir)
    images = tiny_images(sizes, seed=seed) if sizes else []
    return hf_llava_greedy(processor, model_dir, text, images, GREEDY.max_tokens)


@pytest.fixture(scope="module")
def expected(tiny_llava_next_dir):
    return [reference(tiny_llava_next_dir, text, sizes) for text, sizes in REQUESTS]


def test_batch_of_images_and_text_matches_transformers(tiny_llava_next_dir, make_llm, expected):
    llm = make_llm(tiny_llava_next_dir, block_size=8)
    outs = llm.generate([as_prompt(t, s) for t, s in REQUESTS], GREEDY)
    assert [o.token_ids for o in outs] == expected
    assert llm.engine.image_feeder.num_encoded_images == 4
    # the next step releases the features of the finished requests
    llm.generate(["one more"], GREEDY)
    assert not llm.engine.image_feeder.encoded
    assert not llm.engine.executor.runner.image_features


def test_staggered_requests_match_transformers(tiny_llava_next_dir, make_llm, expected):
    llm = make_llm(tiny_llava_next_dir, block_size=8)
    engine, processor = llm.engine, MultiModalProcessor.load(tiny_llava_next_dir)
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


def test_chunked_prefill_through_an_image(tiny_llava_next_dir, make_llm, expected):
    # 8-token chunks: every image (10-24 placeholders) is split across steps
    llm = make_llm(tiny_llava_next_dir, block_size=8, max_num_batched_tokens=8)
    outs = llm.generate([as_prompt(t, s) for t, s in REQUESTS], GREEDY)
    assert [o.token_ids for o in outs] == expected
    # each image encoded once, though its placeholders span several steps
    assert llm.engine.image_feeder.num_encoded_images == 4


@pytest.mark.parametrize("enable_prefix_caching", [False, True])
def test_preemption_recomputes_images(
    tiny_llava_next_dir, make_llm, expected, enable_prefix_caching
):
    # 10 blocks of 8 tokens for 5 requests of up to ~45 tokens each: forces preemption
    llm = make_llm(
        tiny_llava_next_dir,
        block_size=8,
        kv_cache_tokens=80,
        max_model_len=64,
        enable_prefix_caching=enable_prefix_caching,
    )
    outs = llm.generate([as_prompt(t, s) for t, s in REQUESTS], GREEDY)
    assert llm.engine.stats().num_preemptions > 0
    assert [o.token_ids for o in outs] == expected


def test_warmed_patch_buckets_leave_no_misses(tiny_llava_next_dir, make_llm, expected):
    llm = make_llm(
        tiny_llava_next_dir,
        block_size=8,
        max_model_len=128,
        max_num_seqs=4,
        max_num_batched_tokens=128,
        warmup=True,
        strict_shapes=True,
    )
    assert llm.engine.image_feeder.warmed == {3, 5}  # 2x1 / 1x2 and 2x2 grids, + base
    outs = llm.generate([as_prompt(t, s) for t, s in REQUESTS], GREEDY)
    assert [o.token_ids for o in outs] == expected
    assert llm.engine.stats().num_bucket_misses == 0


def test_bad_image_inputs_name_the_field(tiny_llava_next_dir, tiny_model_dir, make_llm):
    llm = make_llm(tiny_llava_next_dir, block_size=8)
    image = tiny_images([(30, 60)])[0]
    cases = [
        ({"prompt": "a <image>", "multi_modal_data": {"image": "not an image"}}, "image"),
        ({"prompt": "a <image> <image>", "multi_modal_data": {"image": image}}, "placeholder"),
        ({"prompt": "no placeholder", "multi_modal_data": {"image": [image]}}, "placeholder"),
        ({"prompt": "a <image>", "multi_modal_data": {"video": image}}, "multi_modal_data"),
        ({"text": "a <image>"}, "prompt"),
    ]
    for prompt, field in cases:
        with pytest.raises(ValueError, match=field):
            llm.generate([prompt], GREEDY)
    processor = MultiModalProcessor.load(tiny_llava_next_dir)
    ids, mm = processor.process("a <image>", [image])
    with pytest.raises(ValueError, match="multi_modal_data"):
        llm.engine.add_request("text-prompt", "a <image>", GREEDY, multi_modal=mm)
    with pytest.raises(ValueError, match="placeholder_ranges"):
        llm.engine.add_request("short", ids[:5], GREEDY, multi_modal=mm)
    with pytest.raises(ValueError, match=r"prompt: contains the image token .* no images"):
        llm.generate(["a <image> without its image"], GREEDY)  # text, and its ids alike
    with pytest.raises(ValueError, match=r"prompt: contains the image token"):
        llm.engine.add_request("ids-only", ids, GREEDY)
    text_llm = make_llm(tiny_model_dir("llama"))
    with pytest.raises(ValueError, match=r"multi_modal_data.*takes no images"):
        text_llm.generate([{"prompt": "a <image>", "multi_modal_data": {"image": image}}], GREEDY)
    with pytest.raises(ValueError, match=r"multi_modal_data.*takes no images"):
        text_llm.engine.add_request("r", ids, GREEDY, multi_modal=mm)


def test_tensor_parallel_is_refused(tiny_llava_next_dir):
    from engine.llm_engine import Engine

    config = EngineConfig(model=str(tiny_llava_next_dir), device="cpu", tp_size=2)
    with pytest.raises(UnsupportedModelError, match=r"Llava-NeXT \(llava_next\)"):
        Engine(config)


def test_speculative_decoding_is_refused(tiny_llava_next_dir):
    from engine.llm_engine import Engine

    config = EngineConfig(
        model=str(tiny_llava_next_dir),
        device="cpu",
        speculative=SpeculativeConfig(method="ngram"),
    )
    with pytest.raises(ValueError, match=r"speculative decoding does not run Llava-NeXT"):
        Engine(config)
