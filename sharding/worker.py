"""One TP rank: a Ray actor that owns one card, joins its group's process group, holds its
shard of the model and its KV heads, and runs the engine's ModelRunner on every step.

The driver (sharding.executor) creates one per bundle of the group's placement group and
calls, in order: `placement` -> `setup` -> `init_kv_cache`/`warmup`/`available_kv_bytes`
(start-up) -> `execute` (every step) -> `shutdown`; `start_profile`/`stop_profile` around
any run of steps (engine.profiling.session). A plain class: the executor wraps it with
ray.remote.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from cluster.resources import assigned_card_ids
from engine.devices import MemoryStats, get_device
from engine.loader import KVSpec, load_config, resolve_dtype
from engine.messages import ModelInput, StepOutput
from engine.model_runner import ModelRunner
from engine.profiling.session import RankProfile, RankProfiler
from sharding.dist import (
    VISIBLE_DEVICES,
    GroupAddress,
    RankEnv,
    destroy_process_group,
    find_free_port,
    init_process_group,
    remove_shm_buffers,
)

__all__ = [
    "RankLoadStats",
    "RankPlacement",
    "RankSetup",
    "RankSpec",
    "RankStats",
    "RankStepResult",
    "TPWorker",
    "from_wire",
    "to_wire",
]


@dataclass(frozen=True)
class RankPlacement:
    """Where a rank landed: its node and process, a port free there, the accelerator ids
    Ray gave it."""

    node_id: str
    pid: int
    free_port: int
    accelerator_ids: tuple[str, ...]


@dataclass(frozen=True)
class RankSpec:
    """What every rank of a group builds (the same for all ranks)."""

    model_path: Path
    device_name: str  # resolved: cpu | cuda | hpu
    dtype_name: str  # an EngineConfig.dtype: auto | float32 | bfloat16 | float16
    block_size: int
    address: GroupAddress
    group_accelerator_ids: tuple[str, ...]  # every rank's card, in rank order
    timeout_s: float  # process-group rendezvous and collectives
    kv_cache_dtype: str = "auto"  # an EngineConfig.kv_cache_dtype: auto | fp8
    quantization: str | None = None  # an EngineConfig.quantization: None | fp8 | int8 | int4
    quantization_stats: str | None = None  # INC's FP8 measurement (fp8 on hpu)


@dataclass(frozen=True)
class RankLoadStats:
    """Host memory of the rank process around the model load (Linux /proc; None elsewhere).

    rss_before_bytes: resident set after the process group was set up, before the build.
    peak_rss_bytes: the high-water mark of the resident set during build + shard + load.
    """

    load_s: float
    num_weight_bytes: int
    rss_before_bytes: int | None
    peak_rss_bytes: int | None

    @property
    def peak_growth_bytes(self) -> int | None:
        if self.rss_before_bytes is None or self.peak_rss_bytes is None:
            return None
        return self.peak_rss_bytes - self.rss_before_bytes


@dataclass(frozen=True)
class RankSetup:
    """What a rank reports once its shard is loaded (the same on every rank but `load`)."""

    kv_spec: KVSpec  # this rank's KV heads
    default_kv_memory_fraction: float
    graph_kinds: tuple[str, ...]
    load: RankLoadStats


@dataclass(frozen=True)
class RankStepResult:
    """Rank 0's answer to a step: what the runner returned and its counters after it."""

    output: StepOutput
    runner_stats: dict[str, int]


@dataclass(frozen=True)
class RankStats:
    num_steps: int
    busy_s: float  # time spent inside `execute` (forward, plus sampling on rank 0)


class TPWorker:
    def __init__(self, tp_rank: int, tp_size: int):
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.runner: ModelRunner | None = None
        self.address: GroupAddress | None = None
        self._num_steps = 0
        self._busy_s = 0.0
        self.profiler = RankProfiler(tp_rank, tp_size)

    def placement(self) -> RankPlacement:
        ctx = ray.get_runtime_context()
        card_ids = assigned_card_ids(ctx.get_accelerator_ids())
        return RankPlacement(ctx.get_node_id(), os.getpid(), find_free_port(), card_ids)

    def setup(self, spec: RankSpec) -> RankSetup:
        """Join the group, build the model on meta, shard it, load this rank's slices,
        quantize them when the spec says so (sharding.quantize)."""
        self.address = spec.address
        torch.set_num_threads(max(1, _num_cores() // self.tp_size))
        device = get_device(spec.device_name, self._expose_group_cards(spec))
        rank_env = RankEnv(self.tp_rank, self.tp_size, spec.device_name, spec.address)
        init_process_group(rank_env, device, spec.timeout_s)
        hf_config = load_config(spec.model_path)
        dtype = resolve_dtype(spec.dtype_name, hf_config, device)
        model, load = self._load_shard(spec.model_path, hf_config, dtype)
        model = model.to(device.torch_device)
        if spec.quantization is not None:
            from sharding.quantize import quantize_shard

            model = quantize_shard(model, spec.quantization, dtype, spec.quantization_stats)
        kv_spec = KVSpec.from_config(hf_config, dtype, self.tp_size, spec.kv_cache_dtype)
        model = device.prepare_model(model)
        self.runner = ModelRunner(model, device, kv_spec, spec.block_size)
        return RankSetup(kv_spec, device.default_kv_memory_fraction, device.graph_kinds, load)

    def _load_shard(
        self, model_path: Path, hf_config, dtype: torch.dtype
    ) -> tuple[torch.nn.Module, RankLoadStats]:
        """Build on meta, shard (AutoTP), read this rank's slices; measure host memory."""
        from sharding.autotp import shard_model
        from sharding.loading import build_meta_model, load_rank_weights

        is_rss_reset = _reset_peak_rss()
        rss_before = _proc_status_bytes("VmRSS")
        start = time.perf_counter()
        model = shard_model(build_meta_model(hf_config, dtype), self.tp_size, dtype)
        report = load_rank_weights(model, model_path, self.tp_rank)
        return model, RankLoadStats(
            load_s=time.perf_counter() - start,
            num_weight_bytes=report.num_bytes,
            rss_before_bytes=rss_before,
            peak_rss_bytes=_proc_status_bytes("VmHWM") if is_rss_reset else None,
        )

    def _expose_group_cards(self, spec: RankSpec) -> int:
        """Ray shows each actor only its own card, but DeepSpeed selects the card by
        LOCAL_RANK: show every rank all of the group's cards, in rank order. NOTE: must run
        before the device runtime initialises. Returns this rank's device index."""
        env_name = VISIBLE_DEVICES.get(spec.device_name)
        if env_name is None or not spec.group_accelerator_ids:
            return 0
        os.environ[env_name] = ",".join(spec.group_accelerator_ids)
        return self.tp_rank

    def available_kv_bytes(self, memory_fraction: float) -> int:
        runner = self._runner()
        return int(runner.device.memory_stats().free_bytes * memory_fraction)

    def init_kv_cache(self, num_blocks: int) -> None:
        self._runner().init_kv_cache(num_blocks)

    def execute(self, wire_inp: ModelInput) -> RankStepResult | None:
        """Run one step (a ModelInput in to_wire form) on this rank's shard, graph replay
        or eager as the runner has it. Rank 0 also samples and returns the result with its
        runner counters; the other ranks return None."""
        runner = self._runner()
        start = time.perf_counter()
        inp = from_wire(wire_inp)
        result = self.profiler.run(inp.shape, lambda: self._execute(runner, inp))
        self._busy_s += time.perf_counter() - start
        self._num_steps += 1
        return result

    def _execute(self, runner: ModelRunner, inp: ModelInput) -> RankStepResult | None:
        if self.tp_rank == 0:
            result = RankStepResult(runner.execute(inp), self.runner_stats())
        else:
            runner.run_logits(inp)  # the lm_head all-reduce needs every rank
            result = None
        runner.device.mark_step()
        return result

    def warmup(self, wire_inp: ModelInput, capture: bool) -> None:
        runner = self._runner()
        runner.warmup(from_wire(wire_inp), capture)
        runner.device.mark_step()

    def runner_stats(self) -> dict[str, int]:
        runner = self._runner()
        return {
            "num_graph_replays": runner.num_graph_replays,
            "num_eager_runs": runner.num_eager_runs,
            "num_graphs": len(runner.graphs),
        }

    def memory_stats(self) -> MemoryStats:
        device = self._runner().device
        device.synchronize()
        return device.memory_stats()

    @ray.method(concurrency_group="watch")
    def watch(self) -> None:
        """Never returns while the actor lives (it runs in its own thread): its result is
        an error exactly when the rank died, a liveness probe the driver reads for free."""
        threading.Event().wait()

    def stats(self) -> RankStats:
        return RankStats(self._num_steps, self._busy_s)

    def start_profile(self, out_dir: str, num_steps: int, modules: bool) -> None:
        """Profile this rank's next `num_steps` executes (engine.profiling.session)."""
        runner = self._runner()
        self.profiler.start(out_dir, num_steps, runner.device, runner, modules)

    def stop_profile(self) -> RankProfile:
        """End the capture; write trace.rank<r>.json and report.rank<r>.json."""
        return self.profiler.finish()

    def shutdown(self) -> list[str]:
        """Free the KV cache, leave the group, delete the group's /dev/shm buffers on this
        node. Returns the removed paths."""
        if self.runner is not None:
            self.runner.kv_caches = []
        destroy_process_group()
        removed = remove_shm_buffers(self.address) if self.address is not None else []
        return [str(p) for p in removed]

    def _runner(self) -> ModelRunner:
        if self.runner is None:
            raise RuntimeError(f"TP rank {self.tp_rank} is not set up: call setup() first")
        return self.runner


def to_wire(value):
    """A step's input as it travels to the ranks: the same dataclasses with CPU tensors
    turned into numpy arrays, which Ray serialises ~20x faster than torch tensors (about
    0.3 ms instead of 6 ms for a decode ModelInput on this 2-core box)."""
    if isinstance(value, torch.Tensor):
        return value.numpy() if value.dtype in _NUMPY_DTYPES else value
    if isinstance(value, (list, tuple)):
        return type(value)(to_wire(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _rebuild(value, to_wire)
    return value


def from_wire(value):
    """Inverse of to_wire (arrays Ray hands back read-only are copied: they are small)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value if value.flags.writeable else value.copy())
    if isinstance(value, (list, tuple)):
        return type(value)(from_wire(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _rebuild(value, from_wire)
    return value


_NUMPY_DTYPES = (torch.int64, torch.int32, torch.float32, torch.float64, torch.bool)


def _rebuild(obj, convert):
    fields = dataclasses.fields(obj)
    return type(obj)(**{f.name: convert(getattr(obj, f.name)) for f in fields if f.init})


def _num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where it is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
