"""Speculative decoding with a tensor-parallel target: tp=2 on real Ray actors (gloo,
DeepSpeed AutoTP), the draft model in the driver process on its own KV cache that mirrors
the shared block tables; verify steps (and the draft's distributions, for sampled rows) go
to every rank like any step. Greedy output equals the target alone at tp=1."""

from __future__ import annotations

import pytest
import ray

from cluster.ray_env import ensure_ray
from engine import LLM, SamplingParams, SpeculativeConfig
from tests.conftest import assert_engine_idle, random_prompts

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
ARGS = dict(skip_tokenizer_init=True, device="cpu", dtype="float32", warmup=False)


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    owns = ensure_ray(num_cpus=4)
    yield
    if owns:
        ray.shutdown()


def test_tp2_target_with_draft_matches_tp1(target_dir, copy_draft_dir, make_llm):
    prompts = random_prompts([7, 30, 16], seed=41)
    reference = make_llm(target_dir, skip_tokenizer_init=True).generate(prompts, GREEDY)
    spec = SpeculativeConfig(draft_model=str(copy_draft_dir), adaptive=False)
    llm = LLM(str(target_dir), tp_size=2, kv_cache_tokens=2048, speculative=spec, **ARGS)
    try:
        engine = llm.engine
        for i, prompt in enumerate(prompts):  # staggered: one arrival per step
            engine.add_request(f"r{i}", prompt, GREEDY)
            engine.step()
        sampled = SamplingParams(max_tokens=8, temperature=0.8, seed=3, ignore_eos=True)
        engine.add_request("sampled", prompts[0], sampled)
        done = {}
        while engine.has_unfinished:
            done |= {o.request_id: o.token_ids for o in engine.step(stream=False)}
        assert [done[f"r{i}"] for i in range(3)] == [r.token_ids for r in reference]
        assert len(done["sampled"]) == 8
        stats = engine.stats()
        assert stats.num_verify_steps > 0 and stats.acceptance_rate > 0.9
        assert_engine_idle(engine)
    finally:
        llm.shutdown()
