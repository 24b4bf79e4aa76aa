"""`gaudi-serve up`: serve models over HTTP until Ctrl-C.

    gaudi-serve up                                  # the bundled model on 127.0.0.1:8000
    gaudi-serve up --config serve.yaml              # the models of a config file
    gaudi-serve up --model ./my-llama --tp 2        # one local model, 2 cards per replica
    gaudi-serve up --address auto --port 8080       # onto a running Ray cluster

Without --address an embedded local Ray starts and stops with the command. Before
anything waits, a config that cannot run fails (exit 2): a tp_size the model's KV heads do
not allow, or a replica no node of the cluster could hold (`device: hpu` without an HPU);
replicas still waiting for resources after --placement-timeout-s fail too (exit 1).

Ctrl-C or SIGTERM stops it cleanly in any phase (starting Ray, deploying, warming up,
waiting for resources, serving): once serving it first waits (up to --drain-timeout-s) for
in-flight requests, then shuts Serve and Ray down and exits 0. A second signal skips the
waits and Serve's graceful shutdown (exit 130); Ray is still shut down.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.commands.ray_connect import connect_ray, import_ray_without_failure_handler
from cluster.commands.shm_cleanup import remove_orphaned_shm_buffers
from cluster.commands.stop_signal import ForcedStop, StopSignal
from cluster.ray_env import is_embedded

EXIT_INVALID = 2
EXIT_FAILED = 1
EXIT_FORCED = 130
DRAIN_POLL_S = 0.2
DEFAULT_PLACEMENT_TIMEOUT_S = 300.0


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
        "--address",
        help="join this Ray cluster (auto | HOST:PORT of its head); default: an embedded one",
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
    parser.add_argument(
        "--placement-timeout-s",
        type=float,
        default=DEFAULT_PLACEMENT_TIMEOUT_S,
        metavar="S",
        help="fail when replicas still wait for resources after S seconds "
        f"(default {DEFAULT_PLACEMENT_TIMEOUT_S:g}; warm-up time does not count)",
    )


def run(args: argparse.Namespace) -> int:
    from cluster.commands.preflight import static_problems
    from deployments.config import ConfigError

    stop = StopSignal().install()  # from the start: a signal never finds a default handler
    try:
        try:
            config = build_config(args)
            problems = static_problems(config)
        except ConfigError as exc:
            return _report(f"{len(exc.problems)} problem(s) in {exc.source}", exc.problems)
        except (FileNotFoundError, ValueError) as exc:
            print(f"gaudi-serve up: {exc}", file=sys.stderr)
            return EXIT_INVALID
        if problems:
            return _report("this config cannot run", problems)
        if stop.is_requested:
            return 0
        return _serve(config, args, stop)
    finally:
        stop.uninstall()


def _report(title: str, problems: list[str]) -> int:
    print(f"gaudi-serve up: {title}:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_INVALID


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


def _serve(config, args: argparse.Namespace, stop: StopSignal) -> int:
    """Start (or join) Ray, check, deploy, wait until running, serve until a signal, then
    stop. Every step between two checks of the stop flag is bounded."""
    from cluster.env import drain_timeout_s

    drain_s = args.drain_timeout_s if args.drain_timeout_s is not None else drain_timeout_s()
    run = _Run(is_embedded=is_embedded(args.address), stop=stop)
    code = EXIT_FAILED
    try:
        code = _start_and_serve(config, args, run, drain_s)
    except ForcedStop:
        pass
    except Exception as exc:
        if not run.is_forced:
            print(f"gaudi-serve up: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        _shut_down(config, run)
    return EXIT_FORCED if run.is_forced else code


@dataclass
class _Run:
    """What this run started, so that shutting down undoes exactly that."""

    is_embedded: bool
    stop: StopSignal
    owns_ray: bool = False
    serve_started: bool = False

    @property
    def is_forced(self) -> bool:
        """A second stop signal arrived: skip every graceful step left."""
        return self.stop.is_forced


def _start_and_serve(config, args: argparse.Namespace, run: _Run, drain_s: float) -> int:
    import_ray_without_failure_handler()
    import ray
    from ray import serve
    from ray.serve import RunTarget

    from cluster.commands.preflight import cluster_problems, describe_nodes, replica_demand
    from cluster.commands.startup import Started, wait_until_running
    from cluster.ray_env import node_resources
    from deployments.app import APP_NAME, build_app, cluster_device

    stop = run.stop
    where = "starting a local Ray" if run.is_embedded else "joining the Ray cluster"
    _say(f"gaudi-serve: {where} ...")
    run.owns_ray = not ray.is_initialized()  # ray.shutdown() undoes a half-done start too
    run.owns_ray = connect_ray(run.stop, address=args.address, num_cpus=args.num_cpus)
    if stop.is_requested:
        return 0
    device = cluster_device()
    demands = [replica_demand(model, device) for model in config.models]
    nodes = node_resources()
    problems = cluster_problems(demands, nodes)
    if problems and run.is_embedded:
        return _report("this cluster cannot run the config", problems)
    for problem in problems:  # an existing cluster may still grow (an autoscaler)
        print(f"gaudi-serve up: warning: {problem}", file=sys.stderr)
    names = ", ".join(m.name for m in config.models)
    _say(f"gaudi-serve: deploying {names} on {describe_nodes(nodes)} ...")
    http = config.http
    serve.start(http_options={"host": http.host, "port": http.port})
    run.serve_started = True
    target = RunTarget(target=build_app(config, device=device), name=APP_NAME, route_prefix="/")
    # Non-blocking: serve.run would wait for the replicas and never look at the stop flag.
    serve.run_many(
        [target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False
    )
    outcome = wait_until_running(APP_NAME, demands, stop, args.placement_timeout_s, _say)
    if outcome.how == Started.STOPPED:
        return 0
    if outcome.how != Started.RUNNING:
        print(f"gaudi-serve up: {outcome.message}", file=sys.stderr)
        return EXIT_FAILED
    _say(ready_message(config, ray.get_runtime_context().gcs_address))
    stop.wait()
    _say("gaudi-serve: draining in-flight requests ...")
    _drain(APP_NAME, drain_s, stop)
    return 0


def _shut_down(config, run: _Run) -> None:
    """Undo what the run started: Serve (gracefully unless a second signal forces it),
    then our Ray, then TP buffers the killed ranks of our own Ray left in /dev/shm."""
    import ray

    from deployments.app import APP_NAME

    _say("gaudi-serve: stopping ...")
    if run.serve_started:
        try:
            with run.stop.interruptible():
                _stop_serving(APP_NAME, run.is_embedded)
        except (ForcedStop, Exception) as exc:  # a forced stop may surface as Ray's error
            if not run.is_forced:
                print(f"gaudi-serve: stopping Serve failed: {exc}", file=sys.stderr)
        if run.is_forced:
            _say("gaudi-serve: skipped Serve's graceful shutdown")
            if not run.is_embedded:  # leave no application behind on a shared cluster
                _delete_app_now(APP_NAME)
    if run.owns_ray:
        ray.shutdown()
    if run.is_embedded and any(m.tp_size > 1 for m in config.models):
        remove_orphaned_shm_buffers()
    _say("gaudi-serve: stopped")


def _stop_serving(app_name: str, is_embedded: bool) -> None:
    """Stop Serve on our own Ray; on a shared cluster remove only our application. Serve
    lets each replica finish its requests (graceful_shutdown_timeout_s) first."""
    from ray import serve

    if is_embedded:
        serve.shutdown()
    else:
        serve.delete(app_name)


def _delete_app_now(app_name: str) -> None:
    """Ask Serve to delete the application, without waiting for its replicas to stop."""
    from ray import serve

    try:
        serve.delete(app_name, _blocking=False)
    except Exception as exc:
        print(f"gaudi-serve: deleting {app_name} failed: {exc}", file=sys.stderr)


def ready_message(config, ray_address: str | None = None) -> str:
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::") else config.http.host
    url = f"http://{host}:{config.http.port}"
    model = config.models[0].name
    names = ", ".join(m.name for m in config.models)
    lines = [
        f"gaudi-serve is up at {url} (models: {names})",
        "Try:",
        f"  curl {url}{_example_request(model)}",
    ]
    if ray_address is not None:
        lines.append(f"Replica states: gaudi-serve status --address {ray_address}")
    return "\n".join([*lines, "Press Ctrl-C to stop."])


def _example_request(model: str) -> str:
    """A curl tail for `model`: a chat turn for the provided chat model, a completion (the
    bundled code model has no chat template) otherwise."""
    from engine.assets import PREPARED_MODEL_NAMES

    header = " -H 'Content-Type: application/json' -d "
    if model in PREPARED_MODEL_NAMES:
        question = "Write a Python function that returns the nth Fibonacci number."
        messages = f'[{{"role": "user", "content": "{question}"}}]'
        body = f'{{"model": "{model}", "messages": {messages}, "max_tokens": 128}}'
        return f"/v1/chat/completions{header}'{body}'"
    body = f'{{"model": "{model}", "prompt": "def fibonacci(n):", "max_tokens": 32}}'
    return f"/v1/completions{header}'{body}'"


def _drain(app_name: str, timeout_s: float, stop: StopSignal) -> None:
    """Wait until the ingress has no request in flight or `timeout_s` passes (after a
    second signal, `stop.wait` raises ForcedStop out of here)."""
    from ray import serve

    handle = serve.get_app_handle(app_name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if handle.num_in_flight.remote().result(timeout_s=5) == 0:
                return
        except Exception as exc:  # an ingress that is gone has nothing left to drain
            print(f"gaudi-serve: cannot ask the ingress ({type(exc).__name__})", file=sys.stderr)
            return
        stop.wait(DRAIN_POLL_S)
    print("gaudi-serve: drain timed out; stopping anyway", file=sys.stderr)


def _say(line: str) -> None:
    print(line, flush=True)
