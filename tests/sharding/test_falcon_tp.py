"""Falcon under tensor parallelism (real Ray, gloo, DeepSpeed AutoTP): tp=2 greedy output is
token-identical to tp=1 for the layouts whose KV heads split, and multi-query (one KV head)
is refused before any rank starts.

DeepSpeed cuts Falcon's fused query_key_value as one contiguous block per rank in units of
KV heads (fusedqkv_utils: FalconDecoderLayer is 'bloomtype'): whole KV groups of the new
decoder architecture ([q.. k v] per group), whole heads of the old multi-head one ([q k v]
per head); self_attention.dense is split by the same heads. ALiBi slopes follow the rank's
heads.
"""

from __future__ import annotations

import pytest
import ray

from cluster.ray_env import ensure_ray
from engine import LLM, SamplingParams
from tests.conftest import assert_engine_idle, random_prompts
from tests.engine.models.falcon_variants import VARIANTS, save_falcon

MAX_NEW = 12
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
LLM_ARGS = dict(
    skip_tokenizer_init=True, device="cpu", dtype="float32", kv_cache_tokens=8192, warmup=False
)
# name -> save_falcon overrides; the new architecture with the embeddings tied to lm_head,
# as Falcon checkpoints ship
MODELS = {
    "new-arch-gqa-tied": {**VARIANTS["new-arch-gqa"], "tie_word_embeddings": True},
    "multi-head-sequential-bias": VARIANTS["multi-head-sequential-bias"],
    "alibi": VARIANTS["alibi"],
}


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    assert ensure_ray(num_cpus=4), "Ray is already up in this process: a module leaked it"
    yield
    ray.shutdown()


@pytest.mark.parametrize("name", list(MODELS))
def test_tp2_matches_tp1(name, tmp_path, make_llm):
    model_dir = save_falcon(tmp_path, **MODELS[name])
    prompts = random_prompts([3, 17, 40, 64], seed=1)
    reference = make_llm(model_dir, skip_tokenizer_init=True).generate(prompts, GREEDY)
    llm = LLM(str(model_dir), tp_size=2, **LLM_ARGS)
    try:
        outs = llm.generate(prompts, GREEDY)
        assert_engine_idle(llm.engine)
    finally:
        llm.shutdown()
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    assert all(len(o.token_ids) == MAX_NEW for o in outs)


def test_multi_query_is_refused_tp2(tmp_path):
    model_dir = save_falcon(tmp_path, **VARIANTS["multi-query"])
    with pytest.raises(ValueError, match=r"tp_size 2 does not divide the model's 1 KV heads"):
        LLM(str(model_dir), tp_size=2, **LLM_ARGS)
