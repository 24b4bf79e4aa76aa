"""Where the autoscaler's last decision is pinned for anyone to read: Ray's internal
key-value store (in the GCS), one JSON value per deployment.

The SLO policy runs inside Serve's controller, out of reach of the ingress that serves
/metrics. After a decision that changes what it says (replicas wanted, serving, starting,
the reason or the bound that limited it), or PUBLISH_PERIOD_S after the last publish for
the figures, the policy writes it here (`DecisionBoard.offer`); the ingress reads it at
scrape time (`read_decisions`). A failed write or read is logged once and skipped: metrics
must never stop the autoscaler or /metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

NAMESPACE = "gaudi_serve_autoscaling"
PUBLISH_PERIOD_S = 5.0
# the fields whose change is published at once (the others ride along)
CHANGE_FIELDS = ("num_replicas", "num_serving", "num_starting", "reason", "limited_by")


def _key(app_name: str, deployment_name: str) -> str:
    return f"{app_name}/{deployment_name}"


class DecisionBoard:
    """One deployment's publisher (kept by its policy object in the controller)."""

    def __init__(self, app_name: str, deployment_name: str):
        self.key = _key(app_name, deployment_name)
        self._last: tuple | None = None
        self._last_at = -float("inf")
        self._has_failed = False

    def offer(self, decision: Mapping[str, Any], now: float | None = None) -> bool:
        """Publish decision (a flat JSON-able dict) if it changed or is due; True if
        written."""
        now = time.monotonic() if now is None else now
        changed = tuple(decision.get(name) for name in CHANGE_FIELDS)
        if changed == self._last and now - self._last_at < PUBLISH_PERIOD_S:
            return False
        try:
            from ray.experimental.internal_kv import _internal_kv_initialized, _internal_kv_put

            if not _internal_kv_initialized():
                return False
            value = json.dumps({**decision, "published_at": time.time()})
            _internal_kv_put(self.key, value, overwrite=True, namespace=NAMESPACE)
        except Exception:
            if not self._has_failed:
                logger.exception("could not publish the autoscaling decision of %s", self.key)
                self._has_failed = True
            return False
        self._last, self._last_at = changed, now
        return True


def read_decisions(app_name: str, deployment_names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """deployment name -> its last published decision (those with none are left out)."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return {}
    out = {}
    for name in deployment_names:
        raw = _internal_kv_get(_key(app_name, name), namespace=NAMESPACE)
        if raw:
            out[name] = json.loads(raw)
    return out
