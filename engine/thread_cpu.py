"""The forward's share of a serving process's CPU: the engine's stepping thread gets an OS
thread name, which the threads it starts inherit (torch's OpenMP workers), so their CPU
can be told from the event loop's and Ray's (Linux /proc; elsewhere nothing is counted).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

logger = logging.getLogger(__name__)

STEP_THREAD_NAME = b"engine-step"  # at most 15 bytes: the kernel's limit
_PR_SET_NAME = 15
_TASKS = "/proc/self/task"


def name_this_thread() -> None:
    """Give the calling thread the OS name STEP_THREAD_NAME (threads it starts later, such
    as an OpenMP team, inherit it). A no-op where prctl is missing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, STEP_THREAD_NAME, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        logger.debug("cannot name the step thread: %r", exc)


def helper_threads_cpu_s(step_thread_id: int | None) -> float:
    """CPU seconds (user + system) of this process's threads named STEP_THREAD_NAME other
    than the stepping thread itself: the workers it started (torch's intra-op team)."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return 0.0
    ticks = 0
    for tid in tids:
        if step_thread_id is not None and int(tid) == step_thread_id:
            continue
        try:
            with open(f"{_TASKS}/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        name_start, name_end = stat.index(b"(") + 1, stat.rindex(b")")
        if stat[name_start:name_end] != STEP_THREAD_NAME:
            continue
        fields = stat[name_end + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def current_thread_id() -> int:
    return threading.get_native_id()
