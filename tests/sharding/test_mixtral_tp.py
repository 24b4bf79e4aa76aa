"""Mixtral under tensor parallelism: each rank holds its share of every expert's FFN
(gate/up rows and down columns of the intermediate dimension, split by sharding.autotp
since AutoTP splits linear layers only) read from the checkpoint's per-expert tensors, and
tp=2 greedy output is token-identical to tp=1 (batched and with staggered arrivals), with
real Ray, gloo and DeepSpeed as in tests/sharding/test_tp_executor.py."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from engine.models.mixtral import StaticMoeExperts, patch_model
from sharding.autotp import _finish_own_layers, _split_own_layers
from sharding.loading import build_meta_model, load_rank_weights
from tests.conftest import (
    STAGGERED_MAX_TOKENS,
    assert_engine_idle,
    random_prompts,
    run_staggered,
    tiny_config,
)
from tests.sharding.test_tp_executor import (  # noqa: F401  (module fixtures: one Ray, no shm left)
    LLM_ARGS,
    assert_group_gone,
    no_new_shm_buffers,
    ray_instance,
)

MAX_NEW = 12
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def mixtral_dir(tiny_model_dir):
    return tiny_model_dir("mixtral")


def split_model(model_dir, tp_rank: int, tp_size: int = 2) -> torch.nn.Module:
    """The experts split as shard_model splits them (the rest left whole: no process
    group), materialised and filled by this rank's loader."""
    from transformers import AutoConfig

    model = build_meta_model(AutoConfig.from_pretrained(model_dir), torch.float32)
    layouts = _split_own_layers(model, tp_size)
    model.to_empty(device="cpu")
    _finish_own_layers(model, layouts, group=None)
    load_rank_weights(model, model_dir, tp_rank)
    return model


def experts_of(model) -> list[StaticMoeExperts]:
    return [m for m in model.modules() if isinstance(m, StaticMoeExperts)]


def whole_experts(model_dir) -> list[StaticMoeExperts]:
    """The unsplit experts, as the engine loads them on one device."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return experts_of(patch_model(model))


# -- each rank's slices, without a group -------------------------------------------------
def test_each_rank_reads_its_slice_of_every_experts_ffn(mixtral_dir):
    full = whole_experts(mixtral_dir)
    inter = tiny_config("mixtral").intermediate_size
    half = inter // 2
    for rank in (0, 1):
        shards = experts_of(split_model(mixtral_dir, rank))
        assert len(shards) == len(full) == 2
        rows = slice(rank * half, (rank + 1) * half)
        for shard, whole in zip(shards, full, strict=True):
            assert shard.gate_up_proj.shape == (4, inter, 64)  # half the gate, half the up rows
            gate, up = whole.gate_up_proj[:, :inter], whole.gate_up_proj[:, inter:]
            expected = torch.cat([gate[:, rows], up[:, rows]], dim=1)
            assert torch.equal(shard.gate_up_proj, expected)
            assert torch.equal(shard.down_proj, whole.down_proj[:, :, rows])


def test_the_ranks_partial_outputs_sum_to_the_whole_layer(mixtral_dir):
    """What the all-reduce after the combine adds up, for the dense and gathered paths."""
    reference = whole_experts(mixtral_dir)[0]
    shards = [experts_of(split_model(mixtral_dir, rank))[0] for rank in (0, 1)]
    for shard in shards:
        shard.tp_all_reduce = None  # no group here: each rank's partial output, summed below
    generator = torch.Generator().manual_seed(0)
    for num_tokens in (1, 9):  # 2 slots < 4 experts: gathered; 18 slots: dense
        hidden = torch.randn(num_tokens, 64, generator=generator)
        index = torch.stack([torch.randperm(4, generator=generator)[:2] for _ in hidden])
        weights = torch.softmax(torch.randn(num_tokens, 2, generator=generator), dim=-1)
        with torch.no_grad():
            total = sum(shard(hidden, index, weights) for shard in shards)
            torch.testing.assert_close(total, reference(hidden, index, weights))


def test_a_tp_size_that_does_not_divide_the_experts_is_refused():
    model = build_meta_model(tiny_config("mixtral", intermediate_size=96), torch.float32)
    with pytest.raises(ValueError, match=r"tp_size 64 does not divide .*gate_up_proj.*valid"):
        _split_own_layers(model, 64)


# -- tp=2 output equals tp=1 -------------------------------------------------------------
@pytest.fixture(scope="module")
def tp_llm(mixtral_dir):
    llm = LLM(str(mixtral_dir), tp_size=2, **LLM_ARGS)
    yield llm
    try:
        assert_engine_idle(llm.engine)
    finally:
        llm.shutdown()
    assert_group_gone(llm.engine.executor)


def test_batch_together_matches_tp1(mixtral_dir, make_llm, tp_llm):
    prompts = random_prompts([3, 17, 40, 64], seed=1)
    reference = make_llm(mixtral_dir, skip_tokenizer_init=True).generate(prompts, GREEDY)
    outs = tp_llm.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == [r.token_ids for r in reference]
    assert all(len(o.token_ids) == MAX_NEW for o in outs)
    # Each rank read half of every expert (the rest splits unevenly at this size: the
    # row-parallel lm_head's 64 inputs, DeepSpeed's grain, all go to rank 0).
    params = dict(build_meta_model(tiny_config("mixtral"), torch.float32).named_parameters())
    model_bytes = 4 * sum(p.numel() for p in params.values())
    expert_bytes = 4 * sum(p.numel() for name, p in params.items() if ".experts." in name)
    for stats in tp_llm.engine.executor.load_stats:
        assert stats.num_weight_bytes <= model_bytes - expert_bytes // 2


def test_staggered_arrivals_match_tp1(mixtral_dir, make_llm, tp_llm):
    """Requests join the running batch at different steps and leave at different steps:
    decode steps of one sequence (the gathered path) and of several (dense)."""
    prompts = random_prompts([9, 33, 5, 21, 48], seed=2)
    arrivals = {0: [0], 2: [1, 2], 3: [3], 7: [4]}  # step -> prompts arriving
    engine = make_llm(mixtral_dir, skip_tokenizer_init=True).engine
    reference = run_staggered(engine, prompts, arrivals=arrivals)
    assert run_staggered(tp_llm.engine, prompts, arrivals=arrivals) == reference
    assert [len(reference[f"r{i}"]) for i in range(5)] == list(STAGGERED_MAX_TOKENS)
