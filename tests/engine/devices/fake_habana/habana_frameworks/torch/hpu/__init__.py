"""FAKE `habana_frameworks.torch.hpu`: one card, allocator stats tests may change, graphs
emulated on the CPU."""

import contextlib
from collections.abc import Iterator

from habana_frameworks import record
from habana_frameworks.torch.hpu.graphs import HPUGraph

__all__ = [
    "MEMORY_STATS",
    "HPUGraph",
    "Stream",
    "device_count",
    "is_available",
    "memory_stats",
    "stream",
    "synchronize",
]

NUM_CARDS = 1
# Keys and meaning as in the real allocator's stats (bytes); tests may replace the values.
MEMORY_STATS = {"Limit": 94 * 2**30, "InUse": 3 * 2**30, "MaxInUse": 5 * 2**30}


def is_available() -> bool:
    record("hpu.is_available")
    return NUM_CARDS > 0


def device_count() -> int:
    return NUM_CARDS


def synchronize() -> None:
    record("hpu.synchronize")


def memory_stats(device: object = None) -> dict[str, int]:
    record("hpu.memory_stats", device)
    return dict(MEMORY_STATS)


class Stream:
    def __init__(self) -> None:
        record("hpu.Stream")


@contextlib.contextmanager
def stream(s: Stream) -> Iterator[None]:
    record("hpu.stream.enter")
    try:
        yield
    finally:
        record("hpu.stream.exit")
