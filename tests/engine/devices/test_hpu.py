"""The HPU backend against the fake Gaudi bridge (no Gaudi here): which bridge calls it
makes, and that its graphs replay what the function computes eagerly."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from engine.devices import get_device, resolve_device_name
from engine.devices.base import (
    CapturedGraph,
    DeviceUnavailableError,
    MemoryStats,
    available_device_names,
)
from tests.engine.devices.conftest import (
    TinyStepModel,
    decode_inputs,
    eager_reference,
    has_real_bridge,
    paged_llama_forward,
    step_inputs,
)


def test_auto_picks_hpu_when_the_bridge_imports(fake_habana, monkeypatch):
    # NOTE: the auto probe imports the bridge, which fixes its mode: lazy must be set first.
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    assert resolve_device_name("auto") == "hpu"
    device = get_device("auto")
    assert (device.name, device.dist_backend, device.has_graphs) == ("hpu", "hccl", True)
    assert device.torch_device == torch.device("hpu", 0)


def test_probe_finds_the_bridge_without_loading_it(fake_habana):
    names = available_device_names()
    assert (names[0], names[-1]) == ("hpu", "cpu")
    assert "habana_frameworks.torch" not in sys.modules  # its mode is not fixed yet


def test_hpu_selects_lazy_mode_before_loading_the_bridge(fake_habana):
    device = get_device("hpu")
    assert os.environ["PT_HPU_LAZY_MODE"] == "1"
    assert ("import habana_frameworks.torch", ("lazy",)) in fake_habana.calls
    assert device.graph_kinds == ("prefill", "decode")
    assert device.default_dtype(torch.float32) == torch.bfloat16


def test_hpu_refuses_a_bridge_loaded_in_eager_mode(fake_habana, monkeypatch):
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "0")
    with pytest.raises(DeviceUnavailableError, match="PT_HPU_LAZY_MODE=1"):
        get_device("hpu")


def test_hpu_without_the_bridge_names_the_available_devices(no_habana):
    with pytest.raises(DeviceUnavailableError) as err:
        get_device("hpu")
    message = str(err.value)
    assert "habana_frameworks.torch" in message
    expected = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    assert f"devices available on this machine: {expected}" in message


def test_mark_step_goes_to_the_bridge(fake_habana):
    device = get_device("hpu")
    fake_habana.clear()
    for _ in range(3):
        device.mark_step()
    assert fake_habana.count("mark_step") == 3


def test_executor_marks_one_step_per_engine_step(fake_habana, make_llm, tiny_model_dir):
    from engine import SamplingParams

    llm = make_llm(tiny_model_dir("llama"), warmup=False)
    hpu = get_device("hpu")
    # The executor marks steps on its device; the runner keeps computing on the CPU.
    llm.engine.executor.device = hpu
    fake_habana.clear()
    steps_before = llm.engine.stats().num_steps
    llm.generate([[5, 6, 7], [8, 9]], SamplingParams(max_tokens=4, temperature=0))
    num_steps = llm.engine.stats().num_steps - steps_before
    assert num_steps >= 4
    assert fake_habana.count("mark_step") == num_steps


def test_an_fp8_kv_cache_saturates_at_the_range_of_the_card(fake_habana, monkeypatch):
    from engine.attention import KV_FP8_DTYPE, quantize_kv
    from engine.loader import KVSpec
    from engine.model_runner import ModelRunner

    hpu = get_device("hpu")  # first: loads the bridge in lazy mode
    from habana_frameworks.torch.utils import experimental as htexp

    fake_habana.clear()
    fp8 = KVSpec(num_layers=1, num_kv_heads=2, head_dim=8, dtype=torch.bfloat16)
    runner = ModelRunner(torch.nn.Module(), hpu, fp8, block_size=16)
    assert fake_habana.count("utils.experimental._get_device_type") == 0  # not an FP8 cache
    fp8 = KVSpec(
        num_layers=1, num_kv_heads=2, head_dim=8, dtype=torch.bfloat16, cache_dtype=KV_FP8_DTYPE
    )
    runner = ModelRunner(torch.nn.Module(), hpu, fp8, block_size=16)
    # Gaudi2 casts float8_e4m3fn within e4m3fnuz's range, 240, not 448.
    assert runner.kv_fp8_max == 240.0
    assert fake_habana.count("utils.experimental._get_device_type") == 1
    x = torch.tensor([300.0, -1000.0, 3.0, 239.0])
    assert quantize_kv(x, runner.kv_fp8_max).float().tolist() == [240.0, -240.0, 3.0, 240.0]
    monkeypatch.setattr(htexp, "DEVICE_TYPE", htexp.synDeviceType.synDeviceGaudi3)
    assert ModelRunner(torch.nn.Module(), hpu, fp8, block_size=16).kv_fp8_max == 448.0
    assert get_device("cpu").kv_fp8_max == 448.0


def test_memory_stats_map_the_allocator_limit_and_use(fake_habana):
    device = get_device("hpu")
    fake_habana.bridge.torch.hpu.MEMORY_STATS.update(Limit=96 * 2**30, InUse=10 * 2**30)
    stats = device.memory_stats()
    assert stats == MemoryStats(total_bytes=96 * 2**30, free_bytes=86 * 2**30)
    assert ("hpu.memory_stats", (0,)) in fake_habana.calls


def test_hccl_is_registered_when_distributed_is_set_up(fake_habana):
    device = get_device("hpu")
    assert fake_habana.count("import habana_frameworks.torch.distributed.hccl") == 0
    assert device.init_distributed_backend() == "hccl"
    assert fake_habana.count("import habana_frameworks.torch.distributed.hccl") == 1
    assert os.environ["PT_HPU_ENABLE_LAZY_COLLECTIVES"] == "true"


def test_one_graph_per_bucket_then_replays_only(fake_habana):
    torch.manual_seed(0)
    device = get_device("hpu")
    model = TinyStepModel()
    shapes = [(8, 1), (4, 1), (2, 16)]  # (batch, query_len), largest first
    fake_habana.clear()
    graphs = {s: device.capture(model, step_inputs(*s, seed=0)) for s in shapes}
    assert fake_habana.count("HPUGraph") == len(shapes)
    assert fake_habana.count("HPUGraph.capture_begin") == len(shapes)
    assert fake_habana.count("HPUGraph.capture_end") == len(shapes)
    assert fake_habana.count("HPUGraph.replay") == 0
    assert all(isinstance(g, CapturedGraph) for g in graphs.values())

    fake_habana.clear()
    for seed in (1, 2):
        for shape, graph in graphs.items():
            inputs = step_inputs(*shape, seed=seed)
            expected, cache_after = eager_reference(model, inputs, [model.cache])
            torch.testing.assert_close(graph(**inputs), expected, rtol=0, atol=0)
            torch.testing.assert_close([model.cache], cache_after, rtol=0, atol=0)
    assert fake_habana.count("HPUGraph") == 0
    assert fake_habana.count("HPUGraph.replay") == 2 * len(shapes)
    assert [g.num_replays for g in graphs.values()] == [2] * len(shapes)


def test_replay_rejects_inputs_of_another_shape(fake_habana):
    device = get_device("hpu")
    graph = device.capture(TinyStepModel(), step_inputs(4, 1, seed=0))
    with pytest.raises(ValueError, match=r"'input_ids' is \(2, 1\).*captured for \(4, 1\)"):
        graph(**step_inputs(2, 1, seed=0))
    with pytest.raises(TypeError, match="graph inputs are"):
        graph(input_ids=torch.zeros(4, 1, dtype=torch.long))


def test_paged_llama_decode_replays_like_eager(fake_habana):
    """The engine's real forward (a tiny Llama over the paged KV cache) is graph-safe:
    a graph captured on padding inputs recomputes exactly what eager computes."""
    device = get_device("hpu")
    forward, caches = paged_llama_forward(num_blocks=8, block_size=4)
    shape = dict(batch=2, num_blocks=3, block_size=4, num_cache_blocks=8)
    graph = device.capture(forward, decode_inputs(**shape, seed=None))
    for seed in (1, 2):
        inputs = decode_inputs(**shape, seed=seed)
        expected, caches_after = eager_reference(forward, inputs, caches)
        torch.testing.assert_close(graph(**inputs), expected, rtol=0, atol=0)
        torch.testing.assert_close(caches, caches_after, rtol=0, atol=0)


def test_capture_refuses_a_host_read(fake_habana):
    def reads_on_host(x: torch.Tensor) -> torch.Tensor:
        return x * x.sum().item()

    device = get_device("hpu")
    with pytest.raises(RuntimeError, match="not supported during HPU Graph capturing"):
        device.capture(reads_on_host, {"x": torch.ones(4)})


@pytest.mark.hpu
@pytest.mark.skipif(not has_real_bridge(), reason="needs Intel Gaudi (habana_frameworks)")
def test_real_hpu_graph_replays_like_eager():
    """On a Gaudi machine: the real bridge's graph recomputes what eager computes."""
    device = get_device("hpu")
    model = TinyStepModel().to(device.torch_device)
    graph = device.capture(model, step_inputs(4, 1, seed=0, device=device.torch_device))
    inputs = step_inputs(4, 1, seed=1, device=device.torch_device)
    expected, cache_after = eager_reference(model, inputs, [model.cache])
    torch.testing.assert_close(graph(**inputs).cpu(), expected.cpu())
    torch.testing.assert_close(model.cache.cpu(), cache_after[0].cpu())
