"""Start or join Ray from a command that handles SIGINT / SIGTERM itself, without Ray's own
signal handlers getting in the way.

    import_ray_without_failure_handler()      # before the first `import ray`
    owns_ray = connect_ray(stop, address=None, num_cpus=4)

Two handlers of Ray's would otherwise take SIGTERM while it starts:
- ray.init installs a Python one that raises SystemExit wherever the main thread is,
  including places where Python ignores exceptions (an at-fork callback of logging), so
  the signal can vanish;
- the driver's C++ failure-signal handler prints a stack trace on SIGTERM and aborts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from cluster.commands.stop_signal import STOP_SIGNALS, StopSignal

__all__ = ["connect_ray", "import_ray_without_failure_handler"]

_RAY_FAILURE_HANDLER_ENV = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


def import_ray_without_failure_handler() -> None:
    """Import Ray with RAY_DISABLE_FAILURE_SIGNAL_HANDLER set for that import only.

    NOTE: Ray reads the variable once, when first imported, so this must come before any
    `import ray` of the process (a no-op after one). It is removed again at once, so the
    Ray processes this process starts keep their failure handlers.
    """
    if "ray" in sys.modules:
        return
    saved = os.environ.get(_RAY_FAILURE_HANDLER_ENV)
    os.environ[_RAY_FAILURE_HANDLER_ENV] = "1"
    try:
        import ray  # noqa: F401
    finally:
        if saved is None:
            del os.environ[_RAY_FAILURE_HANDLER_ENV]
        else:
            os.environ[_RAY_FAILURE_HANDLER_ENV] = saved


def connect_ray(stop: StopSignal, address: str | None, num_cpus: float | None) -> bool:
    """`cluster.ray_env.ensure_ray(address, num_cpus)`, then `stop`'s handlers back in
    place; a stop signal that arrived meanwhile is a stop request once this returns.
    Returns ensure_ray's answer (whether the caller owns the connection).

    Python writes each signal's number to the wakeup fd before any handler runs, so what
    arrived during ray.init is read back from there even if Ray's handler lost it. (ray.init
    cannot run in another thread instead: the processes it starts are killed when the
    thread that started them exits.) A second signal is only counted until Ray is up (as
    everywhere outside `stop.interruptible()`), so that shutting it down finds it whole.
    """
    from cluster.ray_env import ensure_ray

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    owns_ray = True  # also when Ray's handler stopped the start half-way
    try:
        owns_ray = ensure_ray(address=address, num_cpus=num_cpus)
    except SystemExit:  # Ray's handler: a SIGTERM, recorded in the wakeup fd as well
        pass
    finally:
        signal.set_wakeup_fd(previous_fd)
        stop.install()
        arrived = _read_all(read_fd)
        os.close(read_fd)
        os.close(write_fd)
    stops = [signal.Signals(n).name for n in arrived if n in STOP_SIGNALS]
    if stops and not stop.is_requested:
        stop.request(f"{stops[0]} while Ray was starting")
    return owns_ray


def _read_all(fd: int) -> bytes:
    """Everything readable from a non-blocking fd now."""
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 64):
            chunks.append(chunk)
    return b"".join(chunks)
