"""The CUDA backend on an NVIDIA GPU: graph replay equals eager, every bucket's graph in
one memory pool, prefill eager by default, and an engine that replays graphs with zero
bucket misses and the same greedy tokens as without graphs."""

from __future__ import annotations

import pytest
import torch

from engine.devices import get_device
from engine.devices.base import CapturedGraph
from tests.engine.devices.conftest import (
    TinyStepModel,
    decode_inputs,
    eager_reference,
    paged_llama_forward,
    step_inputs,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]


@pytest.mark.parametrize("shape", [(1, 1), (8, 1), (4, 16)])
def test_graph_replay_equals_eager(shape):
    device = get_device("cuda")
    model = TinyStepModel().to(device.torch_device)
    graph = device.capture(model, step_inputs(*shape, seed=0, device=device.torch_device))
    assert isinstance(graph, CapturedGraph)
    for seed in (1, 2, 3):
        inputs = step_inputs(*shape, seed=seed, device=device.torch_device)
        expected, cache_after = eager_reference(model, inputs, [model.cache])
        torch.testing.assert_close(graph(**inputs), expected)
        torch.testing.assert_close(model.cache, cache_after[0])
    assert graph.num_replays == 3


def test_graphs_of_every_bucket_share_one_pool():
    device = get_device("cuda")
    model = TinyStepModel().to(device.torch_device)
    shapes = [(16, 1), (8, 1), (4, 1), (1, 1)]  # largest first, as the engine captures
    graphs = {
        s: device.capture(model, step_inputs(*s, seed=0, device=device.torch_device))
        for s in shapes
    }
    assert {g.graph.pool() for g in graphs.values()} == {device.graph_pool}
    for shape in reversed(shapes):  # any order, each output consumed before the next replay
        inputs = step_inputs(*shape, seed=5, device=device.torch_device)
        expected, _ = eager_reference(model, inputs, [model.cache])
        torch.testing.assert_close(graphs[shape](**inputs), expected)


def test_prefill_is_eager_unless_asked():
    from engine.devices.cuda import CudaDevice

    assert get_device("cuda").graph_kinds == ("decode",)
    assert CudaDevice(capture_prefill=True).graph_kinds == ("prefill", "decode")


def test_memory_dtype_and_nccl():
    device = get_device("cuda")
    stats = device.memory_stats()
    assert 0 < stats.free_bytes <= stats.total_bytes
    assert device.default_dtype(None) in (torch.bfloat16, torch.float16)
    assert device.init_distributed_backend() == "nccl"


def test_paged_llama_decode_graph_equals_eager():
    """The engine's forward over the paged KV cache captures cleanly (no host sync) and
    its replay computes what eager computes, cache writes included."""
    device = get_device("cuda")
    forward, caches = paged_llama_forward(num_blocks=16, block_size=4, device="cuda")
    shape = dict(batch=4, num_blocks=3, block_size=4, num_cache_blocks=16, device="cuda")
    graph = device.capture(forward, decode_inputs(**shape, seed=None))
    for seed in (1, 2):
        inputs = decode_inputs(**shape, seed=seed)
        expected, caches_after = eager_reference(forward, inputs, caches)
        torch.testing.assert_close(graph(**inputs), expected)
        torch.testing.assert_close(caches, caches_after)


def test_engine_replays_graphs_with_zero_misses(make_llm, tiny_model_dir):
    from engine import SamplingParams
    from tests.conftest import random_prompts

    prompts = random_prompts([3, 17, 40, 9, 100], seed=1)
    params = SamplingParams(max_tokens=12, temperature=0)
    eager = make_llm(tiny_model_dir("llama"), device="cuda", enable_graphs=False)
    expected = [o.token_ids for o in eager.generate(prompts, params)]
    llm = make_llm(tiny_model_dir("llama"), device="cuda")
    got = [o.token_ids for o in llm.generate(prompts, params)]
    stats = llm.engine.stats()
    assert got == expected
    assert stats.num_graph_replays > 0
    assert stats.num_bucket_misses == 0
