"""int8/int4 weights under tensor parallelism on the CPU (real Ray, gloo, DeepSpeed AutoTP):
each rank quantizes its own shard after loading, its linears become PackedLinear behind
wrappers that keep DeepSpeed's all-reduce, and TP=2 greedy output equals TP=1 with the same
quantization (engine.quant.GROUP_SIZE divides every row-parallel shard here, so each rank's
quantized slice is exactly the slice of the quantized full matrix)."""

from __future__ import annotations

import os

import psutil
import pytest
import ray

from cluster.ray_env import ensure_ray
from engine import LLM, SamplingParams
from sharding.dist import SHM_BUFFER_PREFIX, SHM_DIR
from tests.conftest import assert_engine_idle, random_prompts

MAX_NEW = 12
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
LLM_ARGS = dict(
    skip_tokenizer_init=True, device="cpu", dtype="float32", kv_cache_tokens=8192, warmup=False
)
# Llama with its own lm_head; Qwen2 (q/k/v biases) with the lm_head tied to the embeddings
MODELS = {"llama": ("llama", {}), "qwen2-tied": ("qwen2", {"tie_word_embeddings": True})}


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    assert ensure_ray(num_cpus=4), "Ray is already up in this process: a module leaked it"
    yield
    ray_processes = psutil.Process().children(recursive=True)
    ray.shutdown()
    psutil.wait_procs(ray_processes, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def no_new_shm_buffers():
    before = set(SHM_DIR.glob(f"{SHM_BUFFER_PREFIX}_{os.getuid()}_*"))
    yield
    left = set(SHM_DIR.glob(f"{SHM_BUFFER_PREFIX}_{os.getuid()}_*")) - before
    assert not left, f"/dev/shm buffers left behind: {sorted(map(str, left))}"


@pytest.mark.parametrize("quantization", ["int8", "int4"])
@pytest.mark.parametrize("model", list(MODELS))
def test_tp2_equals_tp1_with_the_same_quantization(model, quantization, tiny_model_dir, make_llm):
    family, overrides = MODELS[model]
    model_dir = tiny_model_dir(family, **overrides)
    prompts = random_prompts([3, 17, 40, 64], seed=1)
    tp1 = make_llm(model_dir, skip_tokenizer_init=True, quantization=quantization)
    reference = [o.token_ids for o in tp1.generate(prompts, GREEDY)]
    llm = LLM(str(model_dir), tp_size=2, quantization=quantization, **LLM_ARGS)
    try:
        outs = [o.token_ids for o in llm.generate(prompts, GREEDY)]
        # the shared prefix of a second request is served from the cache
        again = llm.generate([[*prompts[3], 7, 8]], GREEDY)[0]
        assert again.num_cached_tokens == 64
        assert_engine_idle(llm.engine)
    finally:
        llm.shutdown()
    assert outs == reference
    assert all(len(t) == MAX_NEW for t in outs)
