"""The pods of a rendered RayService (see deployments.k8s): the accelerator profiles (how a
pod asks Kubernetes and Ray for its cards), where the config is mounted, the ports Ray takes,
and the head and worker pod templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster.ray_env import SERVE_ENV
from deployments.config import ServeConfig

if TYPE_CHECKING:
    from deployments.k8s import K8sOptions, WorkerGroupPlan

__all__ = [
    "ACCELERATORS",
    "CONFIG_DIR",
    "CONFIG_KEY",
    "CONFIG_PATH",
    "HEAD_MEMORY_GIB",
    "HEAD_NUM_CPUS",
    "RAY_INTERNAL_PORTS",
    "RAY_PORTS",
    "AcceleratorProfile",
    "PodFactory",
    "base_env",
]

CONFIG_DIR = "/etc/gaudi-serve"
CONFIG_KEY = "serve.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
HEAD_NUM_CPUS = 2
HEAD_MEMORY_GIB = 8
# Ports Ray itself takes in the pods (name -> port); Serve's HTTP port must avoid them.
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
RAY_INTERNAL_PORTS = {"metrics": 8080, "dashboard-agent": 52365}


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
        """rayStartParams declaring the pod's cards to Ray (not left to detection)."""
        if self.device == "hpu":
            # Shell-quoted JSON: KubeRay pastes it into `ray start --resources=...`.
            return {"resources": f"'{{\"HPU\": {num_cards}}}'"}
        if self.device == "cuda":
            return {"num-gpus": str(num_cards)}
        return {"num-cpus": str(num_cards)}


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


def base_env(options: K8sOptions) -> tuple[tuple[str, str], ...]:
    # GAUDI_SERVE_DEVICE: what `device: auto` means in this cluster. The app is built on the
    # head as soon as it is up, possibly before any accelerator pod has joined.
    return (
        ("GAUDI_SERVE_CONFIG", CONFIG_PATH),
        ("GAUDI_SERVE_DEVICE", ACCELERATORS[options.accelerator].device),
    )


@dataclass(frozen=True)
class PodFactory:
    """Pod templates of one rendering: every pod mounts the config and /dev/shm."""

    config: ServeConfig
    options: K8sOptions
    config_map_name: str

    def head(self) -> dict[str, Any]:
        ports = [{"name": name, "containerPort": port} for name, port in RAY_PORTS.items()]
        resources = {"cpu": str(HEAD_NUM_CPUS), "memory": f"{HEAD_MEMORY_GIB}Gi"}
        # The head holds no card but imports the same stack: it gets the same environment.
        env = ACCELERATORS[self.options.accelerator].env
        container = self._container("ray-head", ports, resources, env)
        return self._template(container, HEAD_MEMORY_GIB, tolerations=[])

    def worker(self, plan: WorkerGroupPlan) -> dict[str, Any]:
        profile, num_cards = plan.profile, plan.num_cards_per_pod
        memory_gib = profile.memory_gib_per_card * num_cards
        resources = {"cpu": str(profile.num_cpus_per_card * num_cards), "memory": f"{memory_gib}Gi"}
        tolerations = []
        if profile.k8s_resource is not None:
            resources[profile.k8s_resource] = str(num_cards)
            # Accelerator nodes are commonly tainted with their resource name.
            tolerations.append(
                {"key": profile.k8s_resource, "operator": "Exists", "effect": "NoSchedule"}
            )
        container = self._container("ray-worker", [], resources, profile.env)
        if profile.capabilities:
            container["securityContext"] = {"capabilities": {"add": list(profile.capabilities)}}
        return self._template(container, memory_gib, tolerations)

    def _container(
        self,
        name: str,
        ray_ports: list[dict[str, Any]],
        resources: dict[str, str],
        env: tuple[tuple[str, str], ...],
    ) -> dict[str, Any]:
        # The port named `serve` is where KubeRay's probes and Serve Service look for Serve.
        ports = [*ray_ports, {"name": "serve", "containerPort": self.config.http.port}]
        return {
            "name": name,
            "image": self.options.resolved_image,
            # SERVE_ENV: Ray Serve settings every Ray process starts with (cluster.ray_env)
            "env": [
                {"name": k, "value": v}
                for k, v in (*base_env(self.options), *SERVE_ENV.items(), *env)
            ],
            "ports": ports,
            "resources": {"requests": dict(resources), "limits": dict(resources)},
            "volumeMounts": [
                {"name": "serve-config", "mountPath": CONFIG_DIR, "readOnly": True},
                {"name": "dshm", "mountPath": "/dev/shm"},
            ],
        }

    def _template(
        self, container: dict[str, Any], memory_gib: int, tolerations: list[dict[str, str]]
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "containers": [container],
            "volumes": [
                {"name": "serve-config", "configMap": {"name": self.config_map_name}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{memory_gib}Gi"}},
            ],
        }
        if tolerations:
            spec["tolerations"] = tolerations
        return {"spec": spec}
