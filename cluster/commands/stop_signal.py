"""Ctrl-C and SIGTERM for a long-running command: the first asks for a clean stop, the
second forces one.

    stop = StopSignal().install()
    while not stop.is_requested:     # every step between two checks is bounded
        ...
        stop.wait(0.5)
    try:
        with stop.interruptible():   # a blocking graceful step a second signal may cut
            ...
    except ForcedStop:
        ...

The first SIGINT or SIGTERM only sets a flag, which the command checks between bounded
steps (starting Ray, deploying, polling the replicas), so it stops cleanly whatever phase
it is in. After the second, the next `wait()` raises `ForcedStop`; inside
`interruptible()` the handler raises it at once, wherever the main thread is blocked.
Nowhere else does a handler raise: an exception raised at an arbitrary point could land
between a `try` and the cleanup it guards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["STOP_SIGNALS", "ForcedStop", "StopSignal"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_WAIT_SLICE_S = 0.5  # a main thread blocked in Event.wait still runs handlers between slices


class ForcedStop(BaseException):
    """A second stop signal arrived: skip the graceful steps. A BaseException, so that the
    `except Exception` blocks it passes through on its way out do not swallow it."""


class StopSignal:
    """Counts SIGINT / SIGTERM: the first sets `is_requested`, the second `is_forced`."""

    def __init__(self) -> None:
        self.count = 0
        self._event = threading.Event()
        self._is_interruptible = False
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignal:
        """(Re)install the handlers. Call it again after anything that replaces them:
        `ray.init` installs its own SIGTERM handler (it raises SystemExit)."""
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, self._on_signal)
            self._previous.setdefault(sig, previous)
        return self

    def uninstall(self) -> None:
        """Put back the handlers that were in place before the first `install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def is_requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str) -> None:
        """Record a stop that arrived some other way (Ray's own SIGTERM handler fired)."""
        self.count += 1
        self._event.set()
        _say(f"gaudi-serve: {reason}: stopping")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until a stop is requested or `timeout_s` passes; True when requested.
        Raises ForcedStop once a second signal has arrived."""
        remaining = timeout_s
        while remaining is None or remaining > 0:
            step = _WAIT_SLICE_S if remaining is None else min(_WAIT_SLICE_S, remaining)
            if self._event.wait(timeout=step):
                break
            if remaining is not None:
                remaining -= step
        if self.is_forced:
            raise ForcedStop(f"{self.count} stop signals")
        return self.is_requested

    @property
    def is_forced(self) -> bool:
        return self.count > 1

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A section a second signal cuts short: ForcedStop is raised in it (at once if
        one already came). Wrap it in a try that handles ForcedStop."""
        if self.is_forced:
            raise ForcedStop(f"{self.count} stop signals")
        self._is_interruptible = True
        try:
            yield
        finally:
            self._is_interruptible = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1
        self._event.set()
        name = signal.Signals(signum).name
        if self.count == 1:
            _say(f"gaudi-serve: {name}: stopping cleanly (send it again to force)")
        elif self.count == 2:
            _say(f"gaudi-serve: {name} again: forcing the stop")
            if self._is_interruptible:
                raise ForcedStop(name)


def _say(line: str) -> None:
    # os.write, not print: a handler may run while the main thread is inside print().
    os.write(2, (line + "\n").encode())
