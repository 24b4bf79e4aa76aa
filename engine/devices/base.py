"""The device interface: everything the model runner needs from a backend.

The runner is the only code that touches the device, and it does so through this class.
Backends (cpu/cuda/hpu) subclass it; each lives in its own module, imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MemoryStats:
    total_bytes: int
    free_bytes: int


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

    def default_dtype(self, config_dtype: torch.dtype | None) -> torch.dtype:
        """The dtype `dtype="auto"` resolves to for a model saved in `config_dtype`."""
        return config_dtype or torch.bfloat16

    def synchronize(self) -> None:
        """Wait for queued device work (timing, memory measurement)."""

    def mark_step(self) -> None:
        """Step boundary: flushes accumulated lazy-mode ops (HPU); no-op elsewhere."""

    def memory_stats(self) -> MemoryStats:
        raise NotImplementedError

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Backend-specific wrapping after load (compile, lazy-mode setup). Default: none."""
        return model

    def capture(self, fn: Callable[..., torch.Tensor], example_inputs: dict) -> Callable:
        """Return a callable with fn's signature that replays a graph captured for the
        shapes of `example_inputs`. Backends without graphs return `fn` itself."""
        return fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index})"
