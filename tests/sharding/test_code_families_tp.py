"""Tensor parallelism for the code and Phi-2 families on the CPU (real Ray, gloo, DeepSpeed
AutoTP): tp=2 greedy output is token-identical to tp=1 for Phi-2 and StarCoder2, batched
and with staggered arrivals; StarCoder (gpt_bigcode) is refused before any rank starts.

What AutoTP does with them (sharding.autotp): Phi's q/k/v/fc1 are column-parallel and
`self_attn.dense`/`fc2` row-parallel (DeepSpeed names Phi's dense; fc2 is the linear
before the next LayerNorm), StarCoder2's `o_proj`/`c_proj` row-parallel; a row-parallel
bias (all of these have one) and Phi's lm_head bias are added once, after the all-reduce.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
import ray

from cluster.ray_env import ensure_ray
from engine import LLM, SamplingParams
from engine.errors import UnsupportedModelError
from tests.conftest import STAGGERED_MAX_TOKENS, assert_engine_idle, random_prompts, run_staggered
from tests.sharding.test_tp_executor import BOUND_S, _is_alive, _live_tp_actors, assert_group_gone

MAX_NEW = 12
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)
LLM_ARGS = dict(
    skip_tokenizer_init=True, device="cpu", dtype="float32", kv_cache_tokens=8192, warmup=False
)
# name -> (family, tiny_config overrides). Phi-2's shape (4 heads, 2 a rank; 40% of each
# head rotated; lm_head with a bias), with per-head q/k LayerNorms too; StarCoder2 (GQA,
# biases, a 24-token window) with its lm_head tied to the embeddings, as StarCoder2-3B/7B.
MODELS = {
    "phi": ("phi", {}),
    "phi-qk-layernorm": ("phi", {"qk_layernorm": True}),
    "starcoder2-tied": ("starcoder2", {"tie_word_embeddings": True}),
}


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One embedded Ray for the module; at the end, none of its processes may survive."""
    assert ensure_ray(num_cpus=4), "Ray is already up in this process: a module leaked it"
    yield
    ray_processes = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, alive = psutil.wait_procs(ray_processes, timeout=BOUND_S)
    alive = [p for p in alive if _is_alive(p.pid)]
    assert not alive, f"Ray processes left after ray.shutdown(): {alive}"


@pytest.fixture(scope="module")
def tp_llms():
    """model dir -> LLM with tp_size=2, one group per model for the whole module."""
    made: dict[Path, LLM] = {}

    def get(model_dir: Path) -> LLM:
        if model_dir not in made:
            made[model_dir] = LLM(str(model_dir), tp_size=2, **LLM_ARGS)
        return made[model_dir]

    yield get
    try:
        for llm in made.values():
            assert_engine_idle(llm.engine)
    finally:
        for llm in made.values():
            llm.shutdown()
    for llm in made.values():
        assert_group_gone(llm.engine.executor)


@pytest.fixture(params=list(MODELS))
def model_dir(request, tiny_model_dir) -> Path:
    family, overrides = MODELS[request.param]
    return tiny_model_dir(family, **overrides)


def test_batch_together_matches_tp1(model_dir, make_llm, tp_llms):
    prompts = random_prompts([3, 17, 40, 64], seed=1)
    reference = make_llm(model_dir, skip_tokenizer_init=True).generate(prompts, GREEDY)
    outs = tp_llms(model_dir).generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    assert all(len(o.token_ids) == MAX_NEW for o in outs)


def test_staggered_arrivals_match_tp1(model_dir, make_llm, tp_llms):
    """Requests join the running batch at different steps and leave at different steps."""
    prompts = random_prompts([9, 33, 5, 21, 48], seed=2)
    reference = run_staggered(make_llm(model_dir, skip_tokenizer_init=True).engine, prompts)
    assert run_staggered(tp_llms(model_dir).engine, prompts) == reference
    assert [len(reference[f"r{i}"]) for i in range(5)] == list(STAGGERED_MAX_TOKENS)


@pytest.mark.parametrize("overrides", [{}, {"multi_query": False, "num_key_value_heads": 4}])
def test_starcoder_is_refused_before_any_rank_starts(overrides, tiny_model_dir):
    """Multi-query (1 KV head, the StarCoder checkpoints) or not: AutoTP's split of the
    fused c_attn does not fit GPTBigCode's attention (engine.families)."""
    before = set(_live_tp_actors())
    with pytest.raises(UnsupportedModelError, match=r"tp_size 2: .* does not run StarCoder"):
        LLM(str(tiny_model_dir("gpt_bigcode", **overrides)), tp_size=2, **LLM_ARGS)
    assert set(_live_tp_actors()) == before
