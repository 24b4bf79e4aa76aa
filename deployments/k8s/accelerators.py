"""The accelerators a rendered RayService can run on: how the pods of each ask Kubernetes
and Ray for their cards. A leaf: the rest of deployments.k8s builds on it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cluster.resources import ray_resource

__all__ = ["ACCELERATORS", "DEFAULT_ACCELERATOR", "AcceleratorProfile"]

DEFAULT_ACCELERATOR = "gaudi"


@dataclass(frozen=True)
class AcceleratorProfile:
    """How the pods of one accelerator ask Kubernetes and Ray for their cards.

    On `cpu` a "card" is one TP rank's slot: one logical Ray CPU backed by
    `num_cpus_per_card` cores (replicas and CPU ranks each ask Ray for 1 CPU).
    """

    name: str  # the --accelerator value
    device: str  # gaudi-serve's device name
    k8s_resource: str | None  # the device plugin's extended resource; None on CPU
    num_cpus_per_card: int
    memory_gib_per_card: int
    env: tuple[tuple[str, str], ...] = ()
    capabilities: tuple[str, ...] = ()

    def ray_start_params(self, num_cards: int) -> dict[str, str]:
        """rayStartParams declaring the pod's cards to Ray (not left to detection), under
        the resource names of cluster.resources."""
        resource = ray_resource(self.device)
        if resource == "CPU":
            return {"num-cpus": str(num_cards)}
        if resource == "GPU":  # Ray's own accelerator resource has its own flag
            return {"num-gpus": str(num_cards)}
        # Shell-quoted JSON: KubeRay pastes it into `ray start --resources=...`.
        return {"resources": f"'{json.dumps({resource: num_cards})}'"}


ACCELERATORS: dict[str, AcceleratorProfile] = {
    "gaudi": AcceleratorProfile(
        name="gaudi",
        device="hpu",
        k8s_resource="habana.ai/gaudi",
        num_cpus_per_card=8,
        memory_gib_per_card=64,
        # Lazy mode must be set before anything in the pod imports the Gaudi bridge (Ray's
        # accelerator detection does); lazy collectives let TP all-reduces run in HPU graphs.
        env=(("PT_HPU_LAZY_MODE", "1"), ("PT_HPU_ENABLE_LAZY_COLLECTIVES", "true")),
        capabilities=("SYS_NICE",),
    ),
    "nvidia": AcceleratorProfile(
        name="nvidia",
        device="cuda",
        k8s_resource="nvidia.com/gpu",
        num_cpus_per_card=8,
        memory_gib_per_card=64,
    ),
    "cpu": AcceleratorProfile(
        name="cpu", device="cpu", k8s_resource=None, num_cpus_per_card=4, memory_gib_per_card=8
    ),
}
