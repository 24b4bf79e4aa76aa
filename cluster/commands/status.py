"""`gaudi-serve status`: the state of every Serve application, deployment and replica on
a running Ray cluster (what `serve status` shows, without needing the dashboard).

    gaudi-serve status                        # the cluster `gaudi-serve up` started here
    gaudi-serve status --address 10.0.0.5:6379

Exit 0 when every application is RUNNING, 1 when one is not (or none is deployed), 2 when
the cluster cannot be reached.
"""

from __future__ import annotations

import argparse
import sys

EXIT_NOT_RUNNING = 1
EXIT_UNREACHABLE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default="auto",
        help="the Ray cluster: auto (the one started on this machine, default) or HOST:PORT "
        "(the GCS address `gaudi-serve up` prints)",
    )


def run(args: argparse.Namespace) -> int:
    import ray

    from cluster.ray_env import ensure_ray

    try:
        owns_ray = ensure_ray(address=args.address)
    except (ConnectionError, RuntimeError) as exc:
        print(f"gaudi-serve status: cannot reach Ray at {args.address}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        lines, is_running = describe_serve()
    finally:
        if owns_ray:
            ray.shutdown()
    print("\n".join(lines))
    return 0 if is_running else EXIT_NOT_RUNNING


def describe_serve() -> tuple[list[str], bool]:
    """(lines, whether every application is RUNNING) for the connected cluster: one line
    per application, deployment and replica, then the HTTP proxies."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    # NOTE: Serve's own client, as `serve.status()` uses it; the public status has only
    # replica counts, the details name each replica, its node and process.
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return ["no Serve instance is running on this cluster"], False
    details = ServeInstanceDetails(**client.get_serve_details())
    if not details.applications:
        return ["Serve is running, with no application deployed"], False
    lines = []
    for app_name, app in details.applications.items():
        lines.append(f"application {app_name}: {_value(app.status)}{_message(app.message)}")
        for name, deployment in app.deployments.items():
            state = _value(deployment.status)
            lines.append(f"  deployment {name}: {state}{_message(deployment.message)}")
            lines += [f"    replica {_describe_replica(r)}" for r in deployment.replicas]
    for node_id, proxy in details.proxies.items():
        lines.append(f"proxy on {proxy.node_ip or node_id}: {_value(proxy.status)}")
    is_running = all(app.status == "RUNNING" for app in details.applications.values())
    return lines, is_running


def _describe_replica(replica) -> str:
    where = f"node {replica.node_ip}, pid {replica.pid}" if replica.node_ip else "not placed yet"
    return f"{replica.replica_id}: {_value(replica.state)} ({where})"


def _value(state) -> str:
    """'RUNNING' from Serve's str enums (whose str() is 'ApplicationStatus.RUNNING')."""
    return str(getattr(state, "value", state))


def _message(message: str) -> str:
    first = message.strip().splitlines()[0] if message and message.strip() else ""
    return f" - {first}" if first else ""
