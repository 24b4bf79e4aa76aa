"""The kustomize tree of a rendered deployment: a base (the CPU rendering) plus one
overlay per accelerator, each a JSON patch from the base to that accelerator's rendering,
so `kubectl apply -k overlays/X` equals `gaudi-serve config render --accelerator X`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from deployments.config import ServeConfig
from deployments.k8s.accelerators import ACCELERATORS
from deployments.k8s.options import K8sOptions
from deployments.k8s.render import render_manifests, to_yaml

__all__ = ["json_patch", "render_kustomize_tree"]

KUSTOMIZE_HEADER = (
    "# Rendered by `gaudi-serve config render --kustomize DIR`: edit the serving config and\n"
    "# render again instead of editing this file.\n"
)


def json_patch(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """RFC 6902 operations turning `old` into `new`: mappings are compared key by key,
    lists of equal length item by item, anything else that differs is replaced whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops = [{"op": "remove", "path": _pointer(path, k)} for k in old if k not in new]
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": _pointer(path, key), "value": value})
            else:
                ops += json_patch(old[key], value, _pointer(path, key))
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [op for i, (a, b) in pairs for op in json_patch(a, b, f"{path}/{i}")]
    if old == new:
        return []
    return [{"op": "replace", "path": path, "value": new}]


def _pointer(path: str, key: str) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


KUSTOMIZE_BASE_ACCELERATOR = "cpu"  # the base runs anywhere; overlays add the cards


def render_kustomize_tree(config: ServeConfig, options: K8sOptions) -> dict[str, str]:
    """A kustomize tree for `config` (relative path -> file text): `base/` rendered for
    CPU, and `overlays/<accelerator>/` with the JSON patches that turn the base into what
    `render_manifests` gives for that accelerator (`options.accelerator` is not used)."""
    base = render_manifests(config, replace(options, accelerator=KUSTOMIZE_BASE_ACCELERATOR))
    header = KUSTOMIZE_HEADER
    files = {
        "base/rayservice.yaml": to_yaml(base, header),
        "base/kustomization.yaml": to_yaml([_kustomization(["rayservice.yaml"])], header),
    }
    for accelerator in ACCELERATORS:
        rendered = render_manifests(config, replace(options, accelerator=accelerator))
        patches = []
        ops = json_patch(base[1], rendered[1])
        if ops:
            target = {
                "group": "ray.io",
                "version": "v1",
                "kind": "RayService",
                "name": options.name,
            }
            patches.append({"path": "rayservice-patch.yaml", "target": target})
            files[f"overlays/{accelerator}/rayservice-patch.yaml"] = to_yaml([ops], header)
        kustomization = _kustomization(["../../base"], patches)
        files[f"overlays/{accelerator}/kustomization.yaml"] = to_yaml([kustomization], header)
    return files


def _kustomization(resources: list[str], patches: list[dict] | None = None) -> dict[str, Any]:
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }
    if patches:
        kustomization["patches"] = patches
    return kustomization
