"""The KV-aware router hashes a prompt's images into its blocks as the engine does: the
same text with another image names other blocks from the image's first block on, so a
replica holding one image's prompt is no cache hit for the other's."""

from __future__ import annotations

import random

import numpy as np

from autoscale.kv_routing import KvAwareRouting
from autoscale.routing_policy import CACHE_HIT
from autoscale.step_time import PREFILL
from engine.block_events import BLOCK_STORED, BlockEvent
from engine.block_manager import BlockManager
from engine.multimodal import MultiModalInput
from engine.prefix_hash import prefix_block_hashes
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

BLOCK = 4
IMAGE_AT = (5, 6)  # placeholder tokens at positions 5..10: blocks 1 and 2
PROMPT = list(range(100, 120))  # 5 blocks; the router hashes the first 4 (one token left)


def image_input(image_hash: int) -> MultiModalInput:
    pixels = np.zeros((1, 3, 2, 2), np.float32)
    return MultiModalInput((image_hash,), (IMAGE_AT,), (pixels,), ((2, 2),))


def router() -> KvAwareRouting:
    routing = KvAwareRouting(BLOCK, rng=random.Random(0))
    for name in ("a", "b"):
        routing.step_time(name).observe(PREFILL, 64, 0.01)
    return routing


def test_image_hashes_go_into_the_blocks_they_overlap():
    routing = router()
    plain = routing.rank(PROMPT, ["a"]).block_hashes
    cat = routing.rank(PROMPT, ["a"], multi_modal=image_input(1)).block_hashes
    dog = routing.rank(PROMPT, ["a"], multi_modal=image_input(2)).block_hashes
    assert len(plain) == len(cat) == len(dog) == 4
    # Block 0 precedes the image: shared. From block 1 on every hash differs.
    assert plain[0] == cat[0] == dog[0]
    assert all(len({p, c, d}) == 3 for p, c, d in zip(plain[1:], cat[1:], dog[1:], strict=True))
    # Exactly the engine's hashes (engine.prefix_hash with the input's extra keys).
    keys = image_input(1).block_extra_keys(len(PROMPT), BLOCK)
    assert keys == [(), (1,), (1,), (), ()]
    assert list(cat) == prefix_block_hashes(PROMPT, BLOCK, num_blocks=4, extra_keys=keys)
    assert routing.rank(PROMPT, ["a"], multi_modal=image_input(1)).block_hashes == cat


def test_a_replica_holding_one_images_prompt_is_a_hit_for_that_image_only():
    routing = router()
    cat = routing.rank(PROMPT, ["a", "b"], multi_modal=image_input(1)).block_hashes
    events = [BlockEvent(i, BLOCK_STORED, h) for i, h in enumerate(cat)]
    routing.index.apply_events("b", events, len(events))
    same = routing.rank(PROMPT, ["a", "b"], multi_modal=image_input(1))
    assert same.decision.replica == "b" and same.decision.reason == CACHE_HIT
    assert same.num_prefill_tokens == {"a": 20, "b": 4}
    other = routing.rank(PROMPT, ["a", "b"], multi_modal=image_input(2))
    assert other.num_prefill_tokens == {"a": 20, "b": 16}  # only block 0 is shared
    text = routing.rank(PROMPT, ["a", "b"])
    assert text.num_prefill_tokens["b"] == 16


def test_the_router_predicts_what_the_engines_block_manager_reuses():
    """A replica (a real block manager) computed the cat prompt: the router's hashes of the
    cat prompt are its blocks, the dog prompt's are not, as the engine's lookup finds."""
    routing = router()
    replica = BlockManager(16, BLOCK)
    seq = Sequence("cat", PROMPT, SamplingParams(), seed=0, multi_modal=image_input(1))
    replica.allocate(seq)
    seq.num_computed_tokens = seq.num_tokens
    replica.publish_computed_blocks(seq)
    batch = replica.drain_events()
    routing.index.apply_events("b", batch.events, batch.next_seq)
    for image, num_cached in ((1, 16), (2, 4)):
        ranking = routing.rank(PROMPT, ["a", "b"], multi_modal=image_input(image))
        assert ranking.num_prefill_tokens["b"] == len(PROMPT) - num_cached
        again = Sequence("again", PROMPT, SamplingParams(), seed=0, multi_modal=image_input(image))
        replica.allocate(again)
        assert again.num_cached_tokens == num_cached  # what the router predicted
        replica.free(again)
    replica.free(seq)
