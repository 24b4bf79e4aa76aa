"""Executors run a step on the model's rank(s). The local one holds a single ModelRunner
in this process; others (the tensor-parallel one in sharding/ drives a group of Ray actors)
come from the caller as an `ExecutorFactory`, or from the entry point group
`gaudi_serve.executors`, so the engine never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from engine.config import EngineConfig
from engine.devices import Device, MemoryStats, get_device
from engine.families import get_family
from engine.loader import KVSpec, load_config, load_model, resolve_dtype
from engine.messages import ModelInput, StepOutput
from engine.model_runner import ModelRunner
from engine.profiling.session import RankProfile, RankProfiler


class Executor(Protocol):
    kv_spec: KVSpec  # per rank
    default_kv_memory_fraction: float
    graph_kinds: tuple[str, ...]

    def available_kv_bytes(self, memory_fraction: float) -> int: ...

    def init_kv_cache(self, num_blocks: int) -> None: ...

    def execute(self, inp: ModelInput) -> StepOutput: ...

    def warmup(self, inp: ModelInput, capture: bool) -> None: ...

    def runner_stats(self) -> dict[str, int]: ...

    def memory_stats(self) -> MemoryStats: ...

    def shutdown(self) -> None: ...

    @property
    def is_healthy(self) -> bool: ...

    # profiling (engine.profiling.session): what a server or `gaudi-serve profile` calls
    def start_profile(self, out_dir: str, num_steps: int, modules: bool = True) -> None:
        """Profile the next `num_steps` steps on every rank (raises ProfileBusyError while
        a capture runs)."""
        ...

    @property
    def num_profiled_steps(self) -> int:
        """Steps the running capture has profiled so far (0 when none runs)."""
        ...

    def stop_profile(self) -> list[RankProfile]:
        """End the capture (early if steps are missing); every rank writes its trace and
        report into out_dir. One RankProfile per rank, in rank order."""
        ...


def kv_cache_config(hf_config: Any) -> Any:
    """The config KVSpec reads: a multimodal model's KV cache is its text model's. The
    text model of a cross-attention model (mllama_text_model) is no family of its own, so
    its dimensions go under the model's own model_type (which the tensor-parallel check
    reads)."""
    text = hf_config.get_text_config()
    if text is hf_config or get_family(hf_config.model_type).cross_attention is None:
        return text
    heads = text.num_attention_heads
    return SimpleNamespace(
        model_type=hf_config.model_type,
        num_attention_heads=heads,
        num_key_value_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
    )


class LocalExecutor:
    """One rank, in this process."""

    def __init__(
        self,
        model_path: Path,
        device_name: str,
        dtype_name: str,
        block_size: int,
        kv_cache_dtype: str = "auto",
        quantization: str | None = None,
        quantization_stats: str | None = None,
        max_num_seqs: int = 1,
    ):
        self.device: Device = get_device(device_name)
        hf_config = load_config(model_path)
        dtype = resolve_dtype(dtype_name, hf_config, self.device)
        family = get_family(hf_config.model_type)
        self.kv_spec = KVSpec.from_config(
            kv_cache_config(hf_config), dtype, kv_cache_dtype=kv_cache_dtype
        )
        model = load_model(
            model_path, dtype, self.device.torch_device, quantization, quantization_stats
        )
        self.runner = ModelRunner(
            self.device.prepare_model(model),
            self.device,
            self.kv_spec,
            block_size,
            encode_image=family.encode_image,
            # a cross-attention model holds one image per running sequence at most
            cross_attention=family.cross_attention,
            num_image_slots=max_num_seqs,
        )
        self.profiler = RankProfiler()

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

    def execute(self, inp: ModelInput) -> StepOutput:
        return self.profiler.run(inp.shape, lambda: self._execute(inp))

    def _execute(self, inp: ModelInput) -> StepOutput:
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

    def start_profile(self, out_dir: str, num_steps: int, modules: bool = True) -> None:
        self.profiler.start(out_dir, num_steps, self.device, self.runner, modules)

    @property
    def num_profiled_steps(self) -> int:
        return self.profiler.num_captured

    def stop_profile(self) -> list[RankProfile]:
        return [self.profiler.finish()]


ExecutorFactory = Callable[[EngineConfig, Path], Executor]
"""Builds the executor of an engine from its config and resolved model directory."""

EXECUTOR_ENTRY_POINT_GROUP = "gaudi_serve.executors"
# the entry point name that provides executors for tp_size > 1
TENSOR_PARALLEL_EXECUTOR = "tensor_parallel"


def create_local_executor(config: EngineConfig, model_path: Path) -> LocalExecutor:
    """The ExecutorFactory for one rank in this process (tp_size 1)."""
    return LocalExecutor(
        model_path,
        config.device,
        config.dtype,
        config.block_size,
        kv_cache_dtype=config.kv_cache_dtype,
        quantization=config.quantization,
        quantization_stats=config.quantization_stats,
        max_num_seqs=config.max_num_seqs,
    )


def default_executor_factory(config: EngineConfig) -> ExecutorFactory:
    """What builds the executor when the caller gives no factory: the LocalExecutor for
    tp_size 1, else the factory registered as TENSOR_PARALLEL_EXECUTOR in the entry point
    group EXECUTOR_ENTRY_POINT_GROUP (the installed gaudi-serve registers sharding's)."""
    if config.tp_size == 1:
        return create_local_executor
    return load_executor_factory(TENSOR_PARALLEL_EXECUTOR)


def load_executor_factory(name: str) -> ExecutorFactory:
    """The ExecutorFactory registered as `name` in the entry point group
    EXECUTOR_ENTRY_POINT_GROUP. Raises LookupError naming the group and what it holds."""
    found = entry_points(group=EXECUTOR_ENTRY_POINT_GROUP)
    matches = [ep for ep in found if ep.name == name]
    if not matches:
        raise LookupError(
            f"no executor factory {name!r} in the entry point group "
            f"{EXECUTOR_ENTRY_POINT_GROUP!r} (registered: {sorted(ep.name for ep in found)}): "
            "pass executor_factory=..., or install gaudi-serve (`pip install -e .`), whose "
            "sharding package registers it"
        )
    return matches[0].load()
