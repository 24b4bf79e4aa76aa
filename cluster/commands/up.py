"""`gaudi-serve up`: serve models over HTTP until Ctrl-C.

    gaudi-serve up                                  # the bundled model on 127.0.0.1:8000
    gaudi-serve up --config serve.yaml              # the models of a config file
    gaudi-serve up --model ./my-llama --tp 2        # one local model, 2 cards per replica
    gaudi-serve up --address auto --port 8080       # onto a running Ray cluster

Without --address an embedded local Ray starts and stops with the command. Ctrl-C or
SIGTERM drains: the command waits (up to --drain-timeout-s) for in-flight requests to
finish, then shuts Serve and Ray down and exits 0. A second Ctrl-C skips the wait.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

EXIT_INVALID = 2
EXIT_FAILED = 1
DRAIN_POLL_S = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="serving config (YAML)")
    parser.add_argument(
        "--model", metavar="PATH", help="serve this local Hugging Face model folder instead"
    )
    parser.add_argument("--name", help="model id clients send with --model (default: folder name)")
    parser.add_argument("--tp", type=int, metavar="N", help="tensor-parallel degree of every model")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000)")
    parser.add_argument(
        "--address", help="join this Ray cluster (auto | ray://HOST:PORT); default: embedded"
    )
    parser.add_argument(
        "--num-cpus", type=int, metavar="N", help="logical CPUs of the embedded Ray"
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        metavar="S",
        help="seconds to wait for in-flight requests on shutdown "
        "(default: GAUDI_SERVE_DRAIN_TIMEOUT_S or 30)",
    )


def run(args: argparse.Namespace) -> int:
    from deployments.config import ConfigError

    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"gaudi-serve up: {len(exc.problems)} problem(s) in {exc.source}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    except (FileNotFoundError, ValueError) as exc:
        print(f"gaudi-serve up: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return _serve(config, args)


def build_config(args: argparse.Namespace):
    """The ServeConfig of the command line: --config (or the default), with --model,
    --name, --tp, --host and --port applied over it."""
    from deployments.config import ServeConfig, load_config, parse_config

    config = load_config(args.config) if args.config else ServeConfig.default()
    data: dict[str, Any] = config.model_dump()
    if args.model is not None:
        path = Path(args.model).expanduser().resolve()
        data["models"] = [{"name": args.name or path.name, "path": path}]
    elif args.name is not None:
        raise ValueError("--name needs --model")
    if args.tp is not None:
        data["models"] = [{**model, "tp_size": args.tp} for model in data["models"]]
    if args.host is not None:
        data["http"]["host"] = args.host
    if args.port is not None:
        data["http"]["port"] = args.port
    return parse_config(data, base_dir=Path.cwd(), source="the command line")


def _serve(config, args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from cluster.env import drain_timeout_s
    from cluster.ray_env import ensure_ray
    from deployments.app import APP_NAME, build_app

    drain_s = args.drain_timeout_s if args.drain_timeout_s is not None else drain_timeout_s()
    is_embedded = args.address is None and not os.environ.get("RAY_ADDRESS")
    owns_ray = ensure_ray(address=args.address, num_cpus=args.num_cpus)
    # NOTE: after ray.init, which installs a C++ SIGTERM handler that would kill us at once.
    stop = _StopSignal()
    try:
        http = config.http
        serve.start(http_options={"host": http.host, "port": http.port})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        print(ready_message(config), flush=True)
        stop.wait()
        print("gaudi-serve: draining in-flight requests ...", flush=True)
        _drain(APP_NAME, drain_s, stop)
        return 0
    except Exception as exc:
        print(f"gaudi-serve up: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        _stop_serving(APP_NAME, is_embedded)
        if owns_ray:
            ray.shutdown()
        print("gaudi-serve: stopped", flush=True)


def _stop_serving(app_name: str, is_embedded: bool) -> None:
    """Stop Serve on our own Ray; on a shared cluster remove only our application. Serve
    lets each replica finish its requests (graceful_shutdown_timeout_s) first."""
    from ray import serve

    try:
        if is_embedded:
            serve.shutdown()
        else:
            serve.delete(app_name)
    except Exception as exc:
        print(f"gaudi-serve: stopping Serve failed: {exc}", file=sys.stderr)


def ready_message(config) -> str:
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    url = f"http://{host}:{config.http.port}"
    model = config.models[0].name
    names = ", ".join(m.name for m in config.models)
    body = f'{{"model": "{model}", "prompt": "def fibonacci(n):", "max_tokens": 32}}'
    return "\n".join(
        [
            f"gaudi-serve is up at {url} (models: {names})",
            "Try:",
            f"  curl {url}/v1/completions -H 'Content-Type: application/json' -d '{body}'",
            "Press Ctrl-C to stop.",
        ]
    )


def _drain(app_name: str, timeout_s: float, stop: _StopSignal) -> None:
    """Wait until the ingress has no request in flight, `timeout_s` passes, or a second
    signal arrives."""
    from ray import serve

    handle = serve.get_app_handle(app_name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and stop.count < 2:
        try:
            if handle.num_in_flight.remote().result(timeout_s=5) == 0:
                return
        except Exception as exc:  # an ingress that is gone has nothing left to drain
            print(f"gaudi-serve: cannot ask the ingress ({type(exc).__name__})", file=sys.stderr)
            return
        time.sleep(DRAIN_POLL_S)
    print("gaudi-serve: drain timed out; stopping anyway", file=sys.stderr)


class _StopSignal:
    """Counts SIGINT / SIGTERM; the first one ends `wait()`."""

    def __init__(self) -> None:
        self.count = 0
        self._event = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1
        self._event.set()

    def wait(self) -> None:
        # a timeout keeps the main thread responsive to signals
        while not self._event.wait(timeout=0.5):
            pass
