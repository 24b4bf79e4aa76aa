"""Start an embedded local Ray, or join a running one.

>>> started = ensure_ray(num_cpus=4)  # doctest: +SKIP
>>> # ... use Ray ...
>>> if started:  # doctest: +SKIP
...     ray.shutdown()
"""

from __future__ import annotations

import logging
import os

__all__ = ["ensure_ray"]

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: float | None = None) -> bool:
    """Make sure this process is connected to Ray. Returns True when this call started or
    joined it (the caller then owns the connection and calls `ray.shutdown()`), False when
    Ray was already initialised (a Serve replica, a test fixture, the user's own script).

    address: None starts an embedded local Ray (token authentication off, as it is only
        reachable from this machine) unless RAY_ADDRESS names a cluster; "auto" or
        "host:port" joins a running cluster.
    num_cpus: logical CPUs of an embedded Ray (default: the machine's cores). Ignored when
        joining.
    """
    import ray

    if ray.is_initialized():
        return False
    is_local = address is None and not os.environ.get("RAY_ADDRESS")
    if is_local:
        # NOTE: must be set before ray.init; Ray 2.60 enables token auth by default.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address=address,
        num_cpus=num_cpus if is_local else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    gcs_address = ray.get_runtime_context().gcs_address
    logger.info("%s Ray at %s", "started" if is_local else "joined", gcs_address)
    return True
