"""A serving config rendered for Kubernetes: a KubeRay `RayService` plus the `ConfigMap` that
carries the config into its pods. Pure functions over a `ServeConfig`; no Kubernetes client,
no Ray, no torch.

    config = load_config("serve.yaml", check_paths=False)
    print(to_yaml(render_manifests(config, K8sOptions(accelerator="gaudi"))))

The accelerator profiles are in deployments.k8s.accelerators, the options in .options, the
worker-group arithmetic in .plan, the pod templates in .pods and the kustomize tree in
.kustomize; deployments.k8s exports the public names.

What comes from the config, and how:
- The config itself travels as a ConfigMap (the validated config dumped back to YAML),
  mounted at /etc/gaudi-serve/serve.yaml in every pod; GAUDI_SERVE_CONFIG points there in
  the container env and in the Serve application's runtime_env, so `deployments.app:app`
  builds exactly this config. The ConfigMap's name ends in a hash of its content: a changed
  config changes the RayService, and KubeRay rolls a new cluster instead of leaving pods on
  a stale file.
- serveConfigV2: one application, `deployments.app:app` at route prefix `/`, and Serve's
  HTTP port from `http.port` (host 0.0.0.0: in a pod the Service, not the bind address,
  decides who can connect). Deployment options are not repeated there: the app reads them
  from the config.
- One worker group per accelerator the models run on (a model's explicit device, or the
  --accelerator for `device: auto`). A replica's TP group must sit on one Ray node, that is
  one pod, so a pod holds `max(tp_size)` cards of its group. TP sizes are powers of two, so
  smaller TP groups tile those pods exactly and a group needs
  ceil(sum(replicas * tp_size) / cards_per_pod) pods, counted at the minimum, initial and
  maximum replica counts. Example: model A (tp 4, 2 replicas) and B (tp 1, 3 replicas) on
  gaudi: 4 cards per pod, 2*4 + 3*1 = 11 cards, 3 pods.
- With autoscaling on any model, enableInTreeAutoscaling lets the Ray autoscaler add and
  remove pods between minReplicas and maxReplicas as Serve adds and removes replicas.
- Every pod mounts a memory-backed emptyDir at /dev/shm: Kubernetes gives pods 64 MiB
  there, and DeepSpeed's CPU all-reduce alone needs 66 MiB per TP rank (Ray's object store
  uses it too). Its size limit is the pod's memory, as KubeRay would set.
- GAUDI_SERVE_DEVICE (container env and runtime_env) says what `device: auto` means: KubeRay
  deploys the app as soon as the head is up, possibly before any accelerator pod has joined,
  so the app cannot yet tell from the cluster's resources.
- Token authentication (RAY_AUTH_MODE/RAY_AUTH_TOKEN) is left to KubeRay: authOptions
  `mode: token` makes the operator create the token Secret and set both variables in every
  Ray container; the manifest never sets them itself.
- Readiness: KubeRay's injected probes check each worker's Serve proxy on the container port
  named `serve`, and the RayService only reports Ready and routes traffic once the Serve
  application is RUNNING, that is once every replica has warmed up. How long that may take
  is sized from the models (deployments.k8s.readiness) and written on the RayService as the
  `gaudi-serve/ready-timeout` annotation, for whatever waits for Ready.
- Model weights: with a model volume (a PVC or a hostPath, deployments.k8s.volumes) every
  pod mounts it read-only at the same path; the head too, since it builds the app.
- Resources per card (CPU, memory) are the accelerator's defaults unless the options say.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from typing import Any

import yaml

from deployments.config import APP_NAME, ConfigError, ServeConfig
from deployments.k8s.options import K8sOptions
from deployments.k8s.plan import plan_worker_groups
from deployments.k8s.pods import (
    CONFIG_KEY,
    RAY_INTERNAL_PORTS,
    RAY_PORTS,
    PodFactory,
    base_env,
)
from deployments.k8s.readiness import READY_TIMEOUT_ANNOTATION, ready_timeout_s

__all__ = [
    "APP_NAME",
    "IMPORT_PATH",
    "config_yaml",
    "relative_path_problems",
    "render_manifests",
    "to_yaml",
]

IMPORT_PATH = "deployments.app:app"
# The Ray version the image is built with (KubeRay reads it for feature checks).
RAY_VERSION = "2.60.0"
HEADER = (
    "# Rendered by `gaudi-serve config render`: edit the serving config and render again\n"
    "# instead of editing this file.\n"
)


def config_yaml(config: ServeConfig) -> str:
    """The config as the pods read it: what was set, dumped back to YAML (defaults stay
    implicit; model paths are absolute after validation)."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def relative_path_problems(data: Any) -> list[str]:
    """Problems with model folders given as relative paths in raw config data (a dict read
    from YAML). Locally they are taken from the config file's folder; in a pod that folder is
    the ConfigMap mount, so they must be absolute paths in the image or a mounted volume."""
    problems = []
    models = data.get("models") if isinstance(data, dict) else None
    for index, model in enumerate(models if isinstance(models, list) else []):
        if not isinstance(model, dict):
            continue
        speculative = model.get("speculative")
        candidates = [
            (f"models.{index}.path", model.get("path")),
            (f"models.{index}.tokenizer", model.get("tokenizer")),
        ]
        if isinstance(speculative, dict):
            where = f"models.{index}.speculative.draft_model"
            candidates.append((where, speculative.get("draft_model")))
        for where, value in candidates:
            if isinstance(value, str) and not PurePosixPath(value).is_absolute():
                problems.append(
                    f"{where}: {value!r} is relative; on Kubernetes give an absolute path in "
                    "the image or in a mounted volume"
                )
    return problems


def render_manifests(config: ServeConfig, options: K8sOptions) -> list[dict[str, Any]]:
    """[ConfigMap, RayService] for `config`. Raises ConfigError when the config cannot run
    in pods (its HTTP port is one Ray takes there)."""
    _check_port(config.http.port)
    text = config_yaml(config)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(f"{options.name}-config-{digest}", options),
        "data": {CONFIG_KEY: text},
    }
    pods = PodFactory(config, options, config_map["metadata"]["name"])
    plans = plan_worker_groups(config, options.accelerator)
    cluster: dict[str, Any] = {"rayVersion": RAY_VERSION}
    if any(model.serve.autoscaling is not None for model in config.models):
        cluster["enableInTreeAutoscaling"] = True
    cluster["authOptions"] = {"mode": "token"}
    cluster["headGroupSpec"] = {
        # num-cpus 0: replicas and TP ranks never land on the head.
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": pods.head(),
    }
    cluster["workerGroupSpecs"] = [
        {
            "groupName": plan.group_name,
            "replicas": plan.num_pods,
            "minReplicas": plan.min_pods,
            "maxReplicas": plan.max_pods,
            "rayStartParams": plan.profile.ray_start_params(plan.num_cards_per_pod),
            "template": pods.worker(plan),
        }
        for plan in plans
    ]
    metadata = _metadata(options.name, options)
    metadata["annotations"] = {READY_TIMEOUT_ANNOTATION: f"{ready_timeout_s(config)}s"}
    ray_service = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serveConfigV2": yaml.safe_dump(_serve_config(config, options), sort_keys=False),
            "rayClusterConfig": cluster,
        },
    }
    return [config_map, ray_service]


def _check_port(port: int) -> None:
    taken = {**RAY_PORTS, **RAY_INTERNAL_PORTS}
    if port in taken.values():
        listing = ", ".join(f"{name} {number}" for name, number in taken.items())
        raise ConfigError(
            "<config>", [f"http.port: {port} is taken by Ray in the pods ({listing}); pick another"]
        )


def _metadata(name: str, options: K8sOptions) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if options.namespace is not None:
        metadata["namespace"] = options.namespace
    metadata["labels"] = {
        "app.kubernetes.io/name": "gaudi-serve",
        "app.kubernetes.io/instance": options.name,
    }
    return metadata


def _serve_config(config: ServeConfig, options: K8sOptions) -> dict[str, Any]:
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": config.http.port},
        "applications": [
            {
                "name": APP_NAME,
                "import_path": IMPORT_PATH,
                "route_prefix": "/",
                "runtime_env": {"env_vars": dict(base_env(options))},
            }
        ],
    }


def to_yaml(documents: list[dict[str, Any]], header: str = HEADER) -> str:
    """YAML documents in their construction order (stable), multi-line strings as blocks."""
    return header + yaml.dump_all(
        documents, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=100
    )


class _BlockDumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings as `|` blocks and never emitting aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)
