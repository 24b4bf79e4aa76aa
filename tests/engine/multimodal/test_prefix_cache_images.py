"""Prefix caching over images: the blocks an image overlaps hash its content, so the same
text with two different images shares no KV block from the image on, and the same image
with the same text is served from the cache (its features not computed again)."""

from __future__ import annotations

from engine import SamplingParams, prefix_block_hashes
from engine.multimodal import MultiModalProcessor
from tests.conftest import tiny_images
from tests.engine.multimodal.reference import hf_llava_greedy

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
BLOCK = 8
# 16 tokens of text before the image: two full blocks the image does not touch
TEXT = "a shared preamble of several words, then USER: <image>\nand a question after it"


def generate(llm, image):
    prompt = {"prompt": TEXT, "multi_modal_data": {"image": image}}
    return llm.generate([prompt], GREEDY)[0]


def test_block_hashes_differ_from_the_image_on(tiny_llava_next_dir):
    processor = MultiModalProcessor.load(tiny_llava_next_dir)
    first, second = tiny_images([(30, 60), (30, 60)], seed=5)
    ids, mm1 = processor.process(TEXT, [first])
    ids2, mm2 = processor.process(TEXT, [second])
    assert ids == ids2 and mm1.image_hashes != mm2.image_hashes
    h1 = prefix_block_hashes(ids, BLOCK, extra_keys=mm1.block_extra_keys(len(ids), BLOCK))
    h2 = prefix_block_hashes(ids, BLOCK, extra_keys=mm2.block_extra_keys(len(ids), BLOCK))
    first_image_block = mm1.placeholder_ranges[0][0] // BLOCK
    assert (
        h1[:first_image_block]
        == h2[:first_image_block]
        == prefix_block_hashes(ids, BLOCK)[:first_image_block]
    )
    assert all(a != b for a, b in zip(h1[first_image_block:], h2[first_image_block:], strict=True))
    # the same image again, even a fresh copy of its pixels, hashes the same
    _, mm1_again = processor.process(TEXT, [first.copy()])
    assert mm1_again.image_hashes == mm1.image_hashes


def test_two_images_same_text_share_only_the_text_before(tiny_llava_next_dir, make_llm):
    llm = make_llm(tiny_llava_next_dir, block_size=BLOCK)
    processor = MultiModalProcessor.load(tiny_llava_next_dir)
    first, second = tiny_images([(30, 60), (30, 60)], seed=5)
    _, mm = processor.process(TEXT, [first])
    text_blocks = mm.placeholder_ranges[0][0] // BLOCK
    assert text_blocks >= 1
    out1 = generate(llm, first)
    out2 = generate(llm, second)
    assert out1.num_cached_tokens == 0
    assert out2.num_cached_tokens == text_blocks * BLOCK
    for image, out in ((first, out1), (second, out2)):
        assert out.token_ids == hf_llava_greedy(processor, tiny_llava_next_dir, TEXT, [image], 6)


def test_same_image_same_text_hits_the_cache(tiny_llava_next_dir, make_llm):
    llm = make_llm(tiny_llava_next_dir, block_size=BLOCK)
    processor = MultiModalProcessor.load(tiny_llava_next_dir)
    (image,) = tiny_images([(50, 40)], seed=6)
    ids, mm = processor.process(TEXT, [image])
    out1 = generate(llm, image)
    encoded = llm.engine.image_feeder.num_encoded_images
    out2 = generate(llm, image.copy())
    # every full block but the last token's is cached: the image's too
    assert out2.num_cached_tokens == (len(ids) - 1) // BLOCK * BLOCK
    assert out2.num_cached_tokens > sum(mm.placeholder_ranges[0])
    assert llm.engine.image_feeder.num_encoded_images == encoded  # not encoded again
    assert out2.token_ids == out1.token_ids
    assert out1.token_ids == hf_llava_greedy(processor, tiny_llava_next_dir, TEXT, [image], 6)
