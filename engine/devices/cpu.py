"""CPU backend: eager execution, gloo for tensor parallelism."""

from __future__ import annotations

import os

import torch

from engine.devices.base import Device, MemoryStats


class CpuDevice(Device):
    name = "cpu"
    dist_backend = "gloo"
    has_graphs = False
    # Host memory is shared with everything else on the machine: take less of it.
    default_kv_memory_fraction = 0.2

    def default_dtype(self, config_dtype: torch.dtype | None) -> torch.dtype:
        # fp16 is slow on CPUs and the tiny models we run here are overhead-bound: use fp32.
        return torch.float32

    def memory_stats(self) -> MemoryStats:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        return MemoryStats(total_bytes=total, free_bytes=free)
