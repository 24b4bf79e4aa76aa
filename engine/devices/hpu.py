"""Intel Gaudi (HPU) backend: lazy mode, mark_step at step boundaries, one HPU graph per
bucket (prefill and decode), memory from the bridge's allocator, hccl.

The bridge (`habana_frameworks.torch`) ships with Intel's container images and is never a
dependency, so it is imported in the constructor, not at module level: importing this
module works anywhere, and choosing "hpu" where the bridge is missing raises a
DeviceUnavailableError naming the devices that are available. The import also has to
come after PT_HPU_LAZY_MODE is set, because the bridge picks lazy or eager mode once,
when it loads (recent releases default to eager; HPU graphs need lazy).

Lazy mode accumulates ops and compiles them into one recipe per distinct graph at the next
`mark_step`. The executor marks a step after every step. The runner should also mark one
between an eager forward and sampling, so the forward's recipe does not depend on which
sampling path (greedy, top-k/top-p, logprobs) the batch takes (a graph replay is flushed
by the bridge itself).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from engine.devices.base import (
    CapturedGraph,
    Device,
    DeviceUnavailableError,
    MemoryStats,
    available_device_names,
)


class HpuDevice(Device):
    name = "hpu"
    dist_backend = "hccl"
    has_graphs = True
    # The graphs of every prefill and decode bucket are captured after the KV cache is
    # allocated and keep their own device memory: leave them more room than CUDA needs.
    default_kv_memory_fraction = 0.8

    def __init__(self, index: int = 0):
        super().__init__(index)
        self._htcore, self._hthpu = _import_bridge()
        if not self._hthpu.is_available():
            raise DeviceUnavailableError(
                "device 'hpu': the Gaudi bridge imports but sees no card (check "
                f"HABANA_VISIBLE_MODULES={os.environ.get('HABANA_VISIBLE_MODULES')!r}); "
                f"devices available on this machine: {available_device_names()}"
            )
        num_cards = self._hthpu.device_count()
        if not 0 <= index < num_cards:
            raise ValueError(f"hpu device index must be in 0..{num_cards - 1}, got {index}")
        self._capture_stream = None  # created at the first capture

    def default_dtype(self, config_dtype: torch.dtype | None) -> torch.dtype:
        # Gaudi's matrix engines run bf16 at full rate; fp16/fp32 checkpoints load fine in it.
        return torch.bfloat16

    @property
    def kv_fp8_max(self) -> float:
        """240 on Gaudi2, whose float8_e4m3fn casts keep to the range of e4m3fnuz (Intel
        Neural Compressor's FP8 recipes clamp there on Gaudi2 too); 448 on Gaudi3."""
        from habana_frameworks.torch.utils import experimental as htexp

        if htexp._get_device_type() == htexp.synDeviceType.synDeviceGaudi2:
            return torch.finfo(torch.float8_e4m3fnuz).max
        return super().kv_fp8_max

    def synchronize(self) -> None:
        self._hthpu.synchronize()

    def mark_step(self) -> None:
        self._htcore.mark_step()

    def memory_stats(self) -> MemoryStats:
        # "Limit" is what the bridge's allocator may use on the card, "InUse" what it holds.
        stats = self._hthpu.memory_stats(self.index)
        limit, in_use = int(stats["Limit"]), int(stats["InUse"])
        return MemoryStats(total_bytes=limit, free_bytes=max(limit - in_use, 0))

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        self._htcore.mark_step()  # flush the weight copies queued by model.to("hpu")
        return model

    def init_distributed_backend(self) -> str:
        # Collectives inside HPU graphs (DeepSpeed TP) work only with lazy collectives.
        os.environ.setdefault("PT_HPU_ENABLE_LAZY_COLLECTIVES", "true")
        import habana_frameworks.torch.distributed.hccl  # noqa: F401  registers "hccl"

        return self.dist_backend

    def capture(
        self, fn: Callable[..., torch.Tensor], example_inputs: dict[str, torch.Tensor]
    ) -> CapturedGraph:
        """Capture fn(**inputs) as one HPU graph for the shapes of example_inputs (the
        bridge runs fn while capturing). fn may write the KV cache at the example inputs'
        slots (point them at the padding block) and must not read values on the host."""
        hthpu = self._hthpu
        if self._capture_stream is None:
            self._capture_stream = hthpu.Stream()
        with torch.inference_mode():
            static_inputs = {name: t.clone() for name, t in example_inputs.items()}
            # NOTE: flush pending lazy ops (the clones above) so they stay out of the graph.
            self._htcore.mark_step()
            graph = hthpu.HPUGraph()
            with hthpu.stream(self._capture_stream):
                graph.capture_begin()
                try:
                    static_output = fn(**static_inputs)
                finally:
                    # NOTE: end the capture even when fn fails, or the bridge stays capturing.
                    graph.capture_end()
            hthpu.synchronize()
        return CapturedGraph(graph, static_inputs, static_output)


def _import_bridge():
    """(habana_frameworks.torch.core, habana_frameworks.torch.hpu), loaded in lazy mode."""
    # NOTE: must precede the bridge's first import in this process: it reads the mode once.
    os.environ.setdefault("PT_HPU_LAZY_MODE", "1")
    try:
        import habana_frameworks.torch.core as htcore
        import habana_frameworks.torch.hpu as hthpu
        from habana_frameworks.torch.utils.internal import is_lazy
    except ImportError as exc:
        raise DeviceUnavailableError(
            "device 'hpu' needs the Intel Gaudi PyTorch bridge (habana_frameworks.torch, "
            f"from Intel's Gaudi software stack), which does not import here ({exc}); "
            f"devices available on this machine: {available_device_names()}"
        ) from exc
    if not is_lazy():
        raise DeviceUnavailableError(
            "device 'hpu' runs in lazy mode (HPU graphs need it), but the Gaudi bridge was "
            f"loaded in eager mode (PT_HPU_LAZY_MODE={os.environ.get('PT_HPU_LAZY_MODE')!r}); "
            "set PT_HPU_LAZY_MODE=1 in the process environment, before anything imports "
            "habana_frameworks.torch"
        )
    return htcore, hthpu
