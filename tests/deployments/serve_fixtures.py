"""Helpers for the Serve tests: a real Ray + Serve app on tiny models, one per test module,
torn down with a check that no Ray process is left behind, and an executor factory that
wedges an engine on command (faults go in through the executor, as on real hardware)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from engine import EngineConfig, Executor, ExecutorFactory

# Small engine limits: few buckets to warm up, tiny KV cache.
TEST_ENGINE = {
    "max_num_seqs": 4,
    "max_model_len": 128,
    "kv_cache_tokens": 2048,
    "max_num_batched_tokens": 256,
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def model_entry(name: str, path: Path, **serve: Any) -> dict[str, Any]:
    """One `models:` entry of a config: CPU, fp32, TEST_ENGINE limits."""
    return {
        "name": name,
        "path": str(path),
        "device": "cpu",
        "dtype": "float32",
        "engine": dict(TEST_ENGINE),
        "serve": serve,
    }


def with_chat_template(model_dir: Path, out_dir: Path) -> Path:
    """A copy of `model_dir` whose tokenizer has CHAT_TEMPLATE."""
    shutil.copytree(model_dir, out_dir)
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_llm(model_dir: Path):
    """The offline engine with the same limits as the served models."""
    from engine import LLM

    return LLM(str(model_dir), device="cpu", dtype="float32", **TEST_ENGINE)


@contextlib.contextmanager
def running_app(
    models: list[dict[str, Any]],
    num_cpus: int = 8,
    wait_until_running: bool = True,
    executor_factory: ExecutorFactory | None = None,
) -> Iterator[str]:
    """Start Ray (`num_cpus` logical CPUs) and Serve on a free port, run the app of
    `models` (replicas build executors with `executor_factory`, None = the default), yield
    its base URL; at exit shut both down and check that every process Ray started has
    exited. With wait_until_running False it yields as soon as the app is
    deployed (for tests of replicas that never start)."""
    import ray
    from ray import serve

    from cluster.ray_env import apply_serve_env
    from deployments.app import APP_NAME, build_app
    from deployments.config import parse_config

    config = parse_config({"models": models})
    apply_serve_env()  # the Serve settings `gaudi-serve up` runs with
    ray.init(num_cpus=num_cpus, include_dashboard=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(config, device="cpu", executor_factory=executor_factory)
        if wait_until_running:
            serve.run(app, name=APP_NAME, route_prefix="/")
        else:
            serve._run(app, name=APP_NAME, route_prefix="/", _blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray_processes = psutil.Process().children(recursive=True)
        ray.shutdown()
        assert_all_exited(ray_processes)


def assert_all_exited(processes: list[psutil.Process], timeout_s: float = 30.0) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"Ray processes left running: {[(p.pid, p.name()) for p in alive]}"


def wait_until(predicate, timeout_s: float = 60.0, interval_s: float = 0.2) -> Any:
    """Poll `predicate` until it returns a truthy value (returned) or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {predicate}")
        time.sleep(interval_s)


@dataclass(frozen=True)
class WedgeOnMarker:
    """An executor factory: sharding's executor, whose `execute` wedges -- blocks, as a hung
    device call would -- from the first call that finds the file `marker` (`wedge()` makes
    it). Only engines of `model_dir` (None: any) look for it.

    That call claims the marker (renames it to `claimed`), so one engine wedges and a
    replica that replaces it runs normally. The wedged engine's steps return, raising
    EngineDeadError, once `release()` removes the claimed file. Holds only paths, so it
    pickles into Serve replicas on this machine.
    """

    marker: Path
    model_dir: Path | None = None

    @property
    def claimed(self) -> Path:
        return self.marker.with_name(f"{self.marker.name}.claimed")

    def wedge(self) -> None:
        self.marker.touch()

    def is_wedged(self) -> bool:
        """Whether an engine claimed the marker (and blocks) and was not released yet."""
        return self.claimed.exists()

    def release(self) -> None:
        self.marker.unlink(missing_ok=True)
        self.claimed.unlink(missing_ok=True)

    def __call__(self, config: EngineConfig, model_path: Path) -> Executor:
        from sharding.factory import create_executor

        executor = create_executor(config, model_path)
        if self.model_dir is not None and model_path.resolve() != self.model_dir.resolve():
            return executor
        return WedgeableExecutor(executor, self)


class WedgeableExecutor:
    """A real executor behind a WedgeOnMarker: every call goes to it until `execute` finds
    the marker; from then on `execute` blocks until the marker is released."""

    def __init__(self, inner: Executor, wedge: WedgeOnMarker):
        self.inner = inner
        self.wedge = wedge
        self.is_wedged = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def execute(self, inp):
        if not self.is_wedged and self.wedge.marker.exists():
            with contextlib.suppress(FileNotFoundError):  # another engine claimed it first
                self.wedge.marker.rename(self.wedge.claimed)
                self.is_wedged = True
        if not self.is_wedged:
            return self.inner.execute(inp)
        while self.wedge.claimed.exists():
            time.sleep(0.05)
        from engine import EngineDeadError

        raise EngineDeadError(f"the engine was wedged by {self.wedge.marker}")


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(name, frozenset(label items)): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def engine_stat(metrics: dict, field: str, model: str) -> dict[str, float]:
    """{replica: value} of one engine stat of `model` from parse_metrics output."""
    out = {}
    for (name, labels), value in metrics.items():
        labels = dict(labels)
        is_field = name in (f"gaudi_serve_engine_{field}", f"gaudi_serve_engine_{field}_total")
        if is_field and labels.get("model") == model:
            out[labels["replica"]] = value
    return out
