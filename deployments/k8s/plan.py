"""How many pods of how many cards a config needs, per accelerator (see deployments.k8s)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from deployments.config import ModelConfig, ServeConfig
from deployments.k8s.accelerators import ACCELERATORS, AcceleratorProfile

__all__ = ["WorkerGroupPlan", "plan_worker_groups"]


@dataclass(frozen=True)
class WorkerGroupPlan:
    """One worker group: which models it runs and how many pods of how many cards."""

    profile: AcceleratorProfile
    model_names: tuple[str, ...]
    num_cards_per_pod: int
    min_pods: int
    num_pods: int  # at start
    max_pods: int

    @property
    def group_name(self) -> str:
        return f"{self.profile.name}-workers"


def plan_worker_groups(config: ServeConfig, accelerator: str) -> tuple[WorkerGroupPlan, ...]:
    """The worker groups for `config` when `device: auto` means `accelerator`, in the order
    of ACCELERATORS (see the deployments.k8s docstring for the arithmetic)."""
    auto_device = ACCELERATORS[accelerator].device
    by_device: dict[str, list[ModelConfig]] = {}
    for model in config.models:
        device = auto_device if model.device == "auto" else model.device
        by_device.setdefault(device, []).append(model)
    plans = []
    for profile in ACCELERATORS.values():
        models = by_device.get(profile.device, [])
        if not models:
            continue
        cards_per_pod = max(model.tp_size for model in models)
        demands = [(_replica_range(model), model.tp_size) for model in models]
        min_pods, num_pods, max_pods = (
            math.ceil(sum(counts[i] * tp_size for counts, tp_size in demands) / cards_per_pod)
            for i in range(3)
        )
        plans.append(
            WorkerGroupPlan(
                profile=profile,
                model_names=tuple(model.name for model in models),
                num_cards_per_pod=cards_per_pod,
                min_pods=min_pods,
                num_pods=num_pods,
                max_pods=max_pods,
            )
        )
    return tuple(plans)


def _replica_range(model: ModelConfig) -> tuple[int, int, int]:
    """(min, initial, max) replicas, as Serve will run them."""
    scaling = model.serve.autoscaling
    if scaling is None:
        num = model.serve.num_replicas or 1
        return num, num, num
    initial = scaling.min_replicas if scaling.initial_replicas is None else scaling.initial_replicas
    return scaling.min_replicas, initial, scaling.max_replicas
