"""CUDA backend: one CUDA graph per decode bucket, all in one memory pool; nccl.

Graphs remove the per-kernel launch cost that dominates small-batch decode. Prefill runs
eager by default: its kernels are large, so launch overhead is a small share of a step,
and a graph per prefill bucket would pin activation memory the KV cache could use
(`capture_prefill=True` graphs it anyway).

Capture follows torch's CUDA graph rules (docs: "CUDA Graphs", torch.cuda.graph):
- warm the function up on a side stream first, so lazy initialisation (cuBLAS handles and
  workspaces, autotuning) happens outside capture; capture on that same stream;
- every graph of this device shares one memory pool (torch.cuda.graph_pool_handle), so a
  smaller bucket reuses the memory a larger one left free; the engine captures the
  largest bucket first (StepShaper.warmup_shapes) so the pool's blocks fit everything
  after it. Sharing is safe because replays never overlap and each step consumes its
  logits before the next replay (a graph may reuse another's output memory).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.devices.base import (
    STEP_KINDS,
    CapturedGraph,
    Device,
    DeviceUnavailableError,
    MemoryStats,
    available_device_names,
)

# Eager runs on the capture stream before each capture (torch's docs use a few; inference
# needs one to initialise that stream's cuBLAS workspace).
NUM_WARMUP_RUNS = 1


class CudaDevice(Device):
    name = "cuda"
    dist_backend = "nccl"
    has_graphs = True

    def __init__(self, index: int = 0, *, capture_prefill: bool = False):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device 'cuda' is not available here: torch {torch.__version__} sees no "
                f"CUDA GPU; devices available on this machine: {available_device_names()}"
            )
        num_gpus = torch.cuda.device_count()
        if not 0 <= index < num_gpus:
            raise ValueError(f"cuda device index must be in 0..{num_gpus - 1}, got {index}")
        super().__init__(index)
        self.capture_prefill = capture_prefill
        # NOTE: kernels, streams and nccl all use the current device: make it ours.
        torch.cuda.set_device(self.torch_device)
        self._graph_pool: tuple[int, int] | None = None  # created at the first capture
        self._capture_stream: torch.cuda.Stream | None = None

    @property
    def graph_kinds(self) -> tuple[str, ...]:
        return STEP_KINDS if self.capture_prefill else ("decode",)

    def default_dtype(self, config_dtype: torch.dtype | None) -> torch.dtype:
        dtype = config_dtype or torch.bfloat16
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return torch.float16  # pre-Ampere GPUs
        return dtype

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def memory_stats(self) -> MemoryStats:
        free, total = torch.cuda.mem_get_info(self.torch_device)
        return MemoryStats(total_bytes=total, free_bytes=free)

    def init_distributed_backend(self) -> str:
        if not torch.distributed.is_nccl_available():
            raise DeviceUnavailableError(
                f"torch {torch.__version__} was built without NCCL, which device 'cuda' "
                "needs for tensor parallelism"
            )
        return self.dist_backend

    @property
    def graph_pool(self) -> tuple[int, int]:
        """The memory pool every graph of this device is captured into."""
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        return self._graph_pool

    def capture(
        self, fn: Callable[..., torch.Tensor], example_inputs: dict[str, torch.Tensor]
    ) -> CapturedGraph:
        """Capture fn(**inputs) for the shapes of example_inputs. fn may write the KV cache
        (at the example inputs' slots: point them at the padding block) and must not sync
        with the host. The warm-up run executes fn once; the capture itself does not."""
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.torch_device)
        stream = self._capture_stream
        with torch.inference_mode():
            static_inputs = {name: t.clone() for name, t in example_inputs.items()}
            stream.wait_stream(torch.cuda.current_stream(self.torch_device))
            with torch.cuda.stream(stream):
                for _ in range(NUM_WARMUP_RUNS):
                    fn(**static_inputs)
            torch.cuda.current_stream(self.torch_device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.graph_pool, stream=stream):
                static_output = fn(**static_inputs)
        return CapturedGraph(graph, static_inputs, static_output)
