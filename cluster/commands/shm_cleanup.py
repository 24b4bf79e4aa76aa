"""Delete DeepSpeed's CPU all-reduce buffers that no process maps any more.

A TP group removes its own /dev/shm buffers when it shuts down (sharding.dist). A group
killed mid-start, for instance when `gaudi-serve up` is stopped while replicas warm up and
Serve kills them, cannot; `up` calls this after shutting its own Ray down. A buffer still
mapped by a live process belongs to a running group (another command on this machine) and
is kept.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["find_orphaned_shm_buffers", "remove_orphaned_shm_buffers"]

logger = logging.getLogger(__name__)


def find_orphaned_shm_buffers() -> list[Path]:
    """This user's DeepSpeed buffers in /dev/shm that no live process maps."""
    from sharding.dist import SHM_BUFFER_PREFIX, SHM_DIR

    mine = sorted(SHM_DIR.glob(f"{SHM_BUFFER_PREFIX}_{os.getuid()}_*"))
    if not mine:
        return []
    mapped = _mapped_paths()
    return [path for path in mine if str(path) not in mapped]


def remove_orphaned_shm_buffers() -> list[Path]:
    """Delete what `find_orphaned_shm_buffers` finds; returns what was deleted."""
    removed = find_orphaned_shm_buffers()
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        logger.info("removed %d orphaned /dev/shm buffer(s)", len(removed))
    return removed


def _mapped_paths() -> set[str]:
    """Every file path some process on this machine has mapped (what /proc lets us read)."""
    paths: set[str] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6:
                        paths.add(fields[5].strip())
        except OSError:  # gone, or not ours to read
            continue
    return paths
