"""`gaudi-serve up` in a subprocess for the tests: its output lines as they come, and the
checks that it left nothing behind (Ray processes of its own Ray temp dir, unmapped
DeepSpeed buffers in /dev/shm)."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cluster.commands.shm_cleanup import find_orphaned_shm_buffers

HANG_GUARD_S = 300  # a hang guard, not a speed check: first starts are slow on 2 cores


@dataclass
class UpProcess:
    process: subprocess.Popen
    ray_tmpdir: Path
    lines: queue.Queue = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def wait_for_line(self, text: str, timeout_s: float = HANG_GUARD_S) -> str:
        """The first new output line containing `text` (stdout and stderr together)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(f"no {text!r} from gaudi-serve up; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"gaudi-serve up ended without {text!r}; saw {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, timeout_s: float = HANG_GUARD_S) -> tuple[int, str]:
        """(exit code, all output) once the process has exited."""
        code = self.process.wait(timeout_s)
        while (line := self.lines.get(timeout=timeout_s)) is not None:
            self.seen.append(line)
        return code, "".join(self.seen)


@contextmanager
def gaudi_serve_up(*argv: str) -> Iterator[UpProcess]:
    """Run `gaudi-serve up ARGV...` with its own Ray temp dir; kill it if still running at
    exit."""
    # A short path: Ray's unix sockets live under it (their paths are limited to ~107 bytes).
    ray_tmpdir = Path(tempfile.mkdtemp(prefix="gs-up-", dir="/tmp"))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PYTHONUNBUFFERED": "1",
        "RAY_TMPDIR": str(ray_tmpdir),
    }
    command = [sys.executable, "-m", "cluster.commands.cli", "up", *argv]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    up = UpProcess(process, ray_tmpdir)

    def read() -> None:
        for line in process.stdout:
            up.lines.put(line)
        up.lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield up
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def assert_nothing_left_behind(up: UpProcess, shm_before: set[Path]) -> None:
    """No process of this run's Ray is alive; no DeepSpeed buffer created since
    `shm_before` is left that no process maps."""
    _, alive = psutil.wait_procs(_processes_of(up), timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"Ray processes left running: {[(p.pid, p.name()) for p in alive]}"
    left = set(find_orphaned_shm_buffers()) - shm_before
    assert not left, f"DeepSpeed buffers left in /dev/shm: {sorted(left)}"


def _processes_of(up: UpProcess) -> list[psutil.Process]:
    """Every live process started by this run: they all inherit its RAY_TMPDIR (the
    environment at exec, which Ray's renamed workers keep, unlike their command line)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("RAY_TMPDIR") == str(up.ray_tmpdir):
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found
