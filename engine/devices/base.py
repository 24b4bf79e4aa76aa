"""The device interface: everything the model runner needs from a backend.

The runner is the only code that touches the device, and it does so through this class.
Backends (cpu/cuda/hpu) subclass it; each lives in its own module, imported only when chosen.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

STEP_KINDS = ("prefill", "decode")


@dataclass(frozen=True)
class MemoryStats:
    total_bytes: int
    free_bytes: int


class DeviceUnavailableError(RuntimeError):
    """A backend was chosen by name on a machine that cannot run it."""


def available_device_names() -> list[str]:
    """Backends whose runtime is present here, in `device: auto`'s order of preference.

    Probes without importing the Habana bridge: importing it fixes lazy vs eager mode for
    the whole process (see engine.devices.hpu)."""
    names = []
    try:
        if importlib.util.find_spec("habana_frameworks.torch") is not None:
            names.append("hpu")
    except ImportError:  # no `habana_frameworks` package at all
        pass
    if torch.cuda.is_available():
        names.append("cuda")
    return [*names, "cpu"]


class CapturedGraph:
    """A graph captured for one static shape, callable like the function it captured.

    Calling it copies the live inputs into the static buffers the graph reads, replays,
    and returns the static output tensor. NOTE: that tensor is valid only until the next
    replay of any graph of the same device (graphs share memory): consume or copy it first.
    """

    def __init__(
        self,
        graph: object,  # has .replay(): torch.cuda.CUDAGraph, habana's HPUGraph
        static_inputs: dict[str, torch.Tensor],
        static_output: torch.Tensor,
    ):
        self.graph = graph
        self.static_inputs = static_inputs
        self.static_output = static_output
        self.num_replays = 0

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        if inputs.keys() != self.static_inputs.keys():
            raise TypeError(f"graph inputs are {sorted(self.static_inputs)}, got {sorted(inputs)}")
        with torch.inference_mode():
            for name, buffer in self.static_inputs.items():
                value = inputs[name]
                # copy_ would broadcast or cast silently: a wrong shape must not replay.
                if value.shape != buffer.shape or value.dtype != buffer.dtype:
                    raise ValueError(
                        f"graph input {name!r} is {tuple(value.shape)} {value.dtype}; the "
                        f"graph was captured for {tuple(buffer.shape)} {buffer.dtype}"
                    )
                buffer.copy_(value, non_blocking=True)
            self.graph.replay()
        self.num_replays += 1
        return self.static_output


class Device:
    """One accelerator backend. Subclasses set the class attributes and override hooks."""

    name: str = ""
    dist_backend: str = ""  # torch.distributed backend for tensor parallelism
    has_graphs: bool = False  # whether `capture` returns a replayable graph
    # Share of free device memory the KV cache takes when not sized explicitly.
    default_kv_memory_fraction: float = 0.9

    def __init__(self, index: int = 0):
        self.index = index

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.name, self.index) if self.name != "cpu" else torch.device("cpu")

    @property
    def graph_kinds(self) -> tuple[str, ...]:
        """Step kinds (STEP_KINDS) whose buckets warmup captures as graphs; () = none."""
        return STEP_KINDS if self.has_graphs else ()

    def default_dtype(self, config_dtype: torch.dtype | None) -> torch.dtype:
        """The dtype `dtype="auto"` resolves to for a model saved in `config_dtype`."""
        return config_dtype or torch.bfloat16

    @property
    def kv_fp8_max(self) -> float:
        """The largest magnitude the FP8 KV cache (float8_e4m3fn) stores here: 448."""
        return torch.finfo(torch.float8_e4m3fn).max

    def synchronize(self) -> None:
        """Wait for queued device work (timing, memory measurement)."""

    def mark_step(self) -> None:
        """Step boundary: flushes accumulated lazy-mode ops (HPU); no-op elsewhere."""

    def memory_stats(self) -> MemoryStats:
        raise NotImplementedError

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Backend-specific wrapping after load (compile, lazy-mode setup). Default: none."""
        return model

    def init_distributed_backend(self) -> str:
        """Make `dist_backend` usable (import the vendor's plugin, set what it needs) and
        return its name. NOTE: call before torch.distributed.init_process_group."""
        return self.dist_backend

    def capture(self, fn: Callable[..., torch.Tensor], example_inputs: dict) -> Callable:
        """Return a callable with fn's signature that replays a graph captured for the
        shapes of `example_inputs`. Backends without graphs return `fn` itself."""
        return fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index})"
