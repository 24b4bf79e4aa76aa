"""AsyncEngine with images: concurrent streams of image and text requests, as a replica
runs them (the MultiModalInput pickled as it would be from the ingress)."""

from __future__ import annotations

import asyncio
import pickle

from engine import AsyncEngine, EngineConfig, SamplingParams
from engine.multimodal import MultiModalProcessor
from tests.conftest import assert_engine_idle, tiny_images
from tests.engine.multimodal.reference import hf_llava_greedy

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def test_concurrent_image_and_text_streams_match_transformers(tiny_llava_next_dir):
    processor = MultiModalProcessor.load(tiny_llava_next_dir)
    requests = [("USER: <image> what?", [(30, 60)]), ("text only", []), ("<image>!", [(50, 40)])]
    engine = AsyncEngine(
        EngineConfig(
            model=str(tiny_llava_next_dir),
            device="cpu",
            dtype="float32",
            kv_cache_tokens=2048,
            block_size=8,
            warmup=False,
        )
    )

    async def one(i: int, text: str, sizes: list) -> list[int]:
        if sizes:
            ids, mm = processor.process(text, tiny_images(sizes))
            prompt, mm = ids, pickle.loads(pickle.dumps(mm))
        else:
            prompt, mm = text, None
        tokens = []
        async for delta in engine.generate(prompt, GREEDY, f"r{i}", multi_modal=mm):
            tokens += delta.token_ids
        return tokens

    async def main():
        return await asyncio.gather(*(one(i, t, s) for i, (t, s) in enumerate(requests)))

    try:
        outs = asyncio.run(main())
        assert engine.info().vocab_size == 520  # the text model's
        assert_engine_idle(engine.engine)
    finally:
        engine.shutdown()
    for (text, sizes), out in zip(requests, outs, strict=True):
        images = tiny_images(sizes) if sizes else []
        assert out == hf_llava_greedy(processor, tiny_llava_next_dir, text, images, 8)
