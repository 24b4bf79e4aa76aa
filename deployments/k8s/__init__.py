"""A serving config rendered for Kubernetes: a KubeRay `RayService` plus the `ConfigMap`
that carries the config into its pods, or a kustomize tree of them. Pure functions over a
`ServeConfig`; no Kubernetes client, no Ray, no torch (see deployments.k8s.render for what
comes from the config, and how).

    config = load_config("serve.yaml", check_paths=False)
    print(to_yaml(render_manifests(config, K8sOptions(accelerator="gaudi"))))

Modules, each importing only those above it: accelerators (the profiles), volumes (model
weights on a volume), options, plan (pods per worker group), readiness (how long to allow
for Ready), pods (pod templates), render (the manifests), kustomize.
"""

from deployments.k8s.accelerators import ACCELERATORS, DEFAULT_ACCELERATOR, AcceleratorProfile
from deployments.k8s.kustomize import json_patch, render_kustomize_tree
from deployments.k8s.options import DEFAULT_NAME, K8sOptions
from deployments.k8s.plan import WorkerGroupPlan, plan_worker_groups
from deployments.k8s.pods import CONFIG_PATH
from deployments.k8s.readiness import (
    READY_TIMEOUT_ANNOTATION,
    model_ready_timeout_s,
    ready_timeout_s,
)
from deployments.k8s.render import (
    APP_NAME,
    IMPORT_PATH,
    config_yaml,
    relative_path_problems,
    render_manifests,
    to_yaml,
)
from deployments.k8s.volumes import DEFAULT_MODEL_MOUNT, ModelVolume

__all__ = [
    "ACCELERATORS",
    "APP_NAME",
    "CONFIG_PATH",
    "DEFAULT_ACCELERATOR",
    "DEFAULT_MODEL_MOUNT",
    "DEFAULT_NAME",
    "IMPORT_PATH",
    "READY_TIMEOUT_ANNOTATION",
    "AcceleratorProfile",
    "K8sOptions",
    "ModelVolume",
    "WorkerGroupPlan",
    "config_yaml",
    "json_patch",
    "model_ready_timeout_s",
    "plan_worker_groups",
    "ready_timeout_s",
    "relative_path_problems",
    "render_kustomize_tree",
    "render_manifests",
    "to_yaml",
]
