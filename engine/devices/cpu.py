"""CPU backend: eager execution, gloo for tensor parallelism."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

import torch

from engine.devices.base import Device, MemoryStats

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit
_TRIM_THRESHOLD = 1 << 30


class CpuDevice(Device):
    name = "cpu"
    dist_backend = "gloo"
    has_graphs = False
    # Host memory is shared with everything else on the machine: take less of it.
    default_kv_memory_fraction = 0.2

    def default_dtype(self, config_dtype: torch.dtype | None) -> torch.dtype:
        # fp16 is slow on CPUs and the tiny models we run here are overhead-bound: use fp32.
        return torch.float32

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        keep_freed_host_memory()
        return model

    def memory_stats(self) -> MemoryStats:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        return MemoryStats(total_bytes=total, free_bytes=free)


def keep_freed_host_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of handing it back to the OS.

    Each step allocates multi-MiB temporaries (the gathered K/V context of every layer,
    activations) and frees them. By default glibc serves such blocks with mmap and unmaps
    them on free, so the next step page-faults and zeroes them again: on the development
    machine 4.7M page faults and 12.4 s of system time for one 64 x 128-token run, which
    this setting cuts to 19k and 0.1 s, 595 -> 1394 tok/s (benchmarks/engine_profile.py,
    figures in benchmarks/RESULTS.md).
    Raising the mmap threshold to glibc's maximum and the trim threshold to 1 GiB keeps the
    memory in the heap (what vLLM's CPU backend gets by preloading tcmalloc). Returns
    whether it took effect (False off glibc, e.g. musl or macOS). Process-wide, idempotent.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    if not ok:
        logger.warning("mallopt refused the host-memory settings; steps may page-fault")
    return ok
