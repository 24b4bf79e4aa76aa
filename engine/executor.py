"""Executors run a step on the model's rank(s). The local one holds a single ModelRunner
in this process; the tensor-parallel one (sharding/) drives a group of Ray actors."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from engine.config import EngineConfig
from engine.devices import Device, MemoryStats, get_device
from engine.loader import KVSpec, load_config, load_model, resolve_dtype
from engine.model_input import ModelInput
from engine.model_runner import ModelRunner
from engine.sampler import SamplerOutput


class Executor(Protocol):
    kv_spec: KVSpec  # per rank
    default_kv_memory_fraction: float
    graph_kinds: tuple[str, ...]

    def available_kv_bytes(self, memory_fraction: float) -> int: ...

    def init_kv_cache(self, num_blocks: int) -> None: ...

    def execute(self, inp: ModelInput) -> SamplerOutput: ...

    def warmup(self, inp: ModelInput, capture: bool) -> None: ...

    def runner_stats(self) -> dict[str, int]: ...

    def memory_stats(self) -> MemoryStats: ...

    def shutdown(self) -> None: ...

    @property
    def is_healthy(self) -> bool: ...


class LocalExecutor:
    """One rank, in this process."""

    def __init__(self, model_path: Path, device_name: str, dtype_name: str, block_size: int):
        self.device: Device = get_device(device_name)
        hf_config = load_config(model_path)
        dtype = resolve_dtype(dtype_name, hf_config, self.device)
        self.kv_spec = KVSpec.from_config(hf_config, dtype)
        model = load_model(model_path, dtype, self.device.torch_device)
        self.runner = ModelRunner(
            self.device.prepare_model(model), self.device, self.kv_spec, block_size
        )

    @property
    def default_kv_memory_fraction(self) -> float:
        return self.device.default_kv_memory_fraction

    def available_kv_bytes(self, memory_fraction: float) -> int:
        return int(self.device.memory_stats().free_bytes * memory_fraction)

    def init_kv_cache(self, num_blocks: int) -> None:
        self.runner.init_kv_cache(num_blocks)

    @property
    def graph_kinds(self) -> tuple[str, ...]:
        """Step kinds replayed as graphs: none on eager backends."""
        if not self.device.has_graphs:
            return ()
        return getattr(self.device, "graph_kinds", ("prefill", "decode"))

    def execute(self, inp: ModelInput) -> SamplerOutput:
        out = self.runner.execute(inp)
        self.device.mark_step()
        return out

    def warmup(self, inp: ModelInput, capture: bool) -> None:
        self.runner.warmup(inp, capture)
        self.device.mark_step()

    def runner_stats(self) -> dict[str, int]:
        return {
            "num_graph_replays": self.runner.num_graph_replays,
            "num_eager_runs": self.runner.num_eager_runs,
            "num_graphs": len(self.runner.graphs),
        }

    def memory_stats(self) -> MemoryStats:
        self.device.synchronize()
        return self.device.memory_stats()

    @property
    def is_healthy(self) -> bool:
        return True

    def shutdown(self) -> None:
        self.runner.kv_caches = []


def create_executor(config: EngineConfig, model_path: Path) -> Executor:
    """LocalExecutor for tp_size 1; the tensor-parallel executor (sharding/, Ray actors)
    otherwise. NOTE: imported lazily so `import engine` never imports Ray."""
    if config.tp_size == 1:
        return LocalExecutor(model_path, config.device, config.dtype, config.block_size)
    from sharding.executor import TPExecutor

    return TPExecutor(model_path, config)
