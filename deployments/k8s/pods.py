"""The pods of a rendered RayService (see deployments.k8s): where the config (and the model
volume, if any) is mounted, the ports Ray takes, and the head and worker pod templates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.ray_env import SERVE_ENV
from deployments.config import ServeConfig
from deployments.k8s.accelerators import ACCELERATORS
from deployments.k8s.options import K8sOptions
from deployments.k8s.plan import WorkerGroupPlan
from deployments.k8s.volumes import ModelVolume

__all__ = [
    "CONFIG_DIR",
    "CONFIG_KEY",
    "CONFIG_PATH",
    "HEAD_MEMORY_GIB",
    "HEAD_NUM_CPUS",
    "RAY_INTERNAL_PORTS",
    "RAY_PORTS",
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
        cpus_per_card, memory_gib_per_card = self.options.per_card(profile)
        memory_gib = memory_gib_per_card * num_cards
        resources = {"cpu": str(cpus_per_card * num_cards), "memory": f"{memory_gib}Gi"}
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
                *self._model_volume(lambda volume: volume.volume_mount()),
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
                *self._model_volume(lambda volume: volume.volume()),
            ],
        }
        if tolerations:
            spec["tolerations"] = tolerations
        return {"spec": spec}

    def _model_volume(self, entry: Callable[[ModelVolume], dict[str, Any]]) -> list[dict]:
        # The head mounts it too: it builds the app, which validates the model folders.
        volume = self.options.model_volume
        return [] if volume is None else [entry(volume)]
