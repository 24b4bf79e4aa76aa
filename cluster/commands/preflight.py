"""Checks that turn an impossible deployment into an error before anything waits on it.

Static (the config alone; `config check` and `up` before Ray starts): a tp_size that does
not divide the model's KV heads, read from the local config.json, the same rule the
engine enforces when it loads. With the cluster (`up`, once Ray is connected): a replica
that no node could ever hold, such as a `device: hpu` model on a cluster without an HPU
resource, or tp_size 4 of CPU bundles on nodes of 2 CPUs.

    >>> demand = ReplicaDemand("tiny", "hpu", 1, ({"CPU": 1, "HPU": 1},))
    >>> cluster_problems([demand], [{"CPU": 4.0, "memory": 8e9}])  # doctest: +ELLIPSIS
    ["model 'tiny' (device hpu, tp_size 1) needs {'CPU': 1, 'HPU': 1} ... no HPU: ..."]

Neither imports Ray or torch: the cluster's node resources are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.resources import DEVICE_RESOURCES
from deployments.config import ModelConfig, ServeConfig

__all__ = [
    "ReplicaDemand",
    "cluster_problems",
    "describe_nodes",
    "replica_demand",
    "static_problems",
]

# Resources worth naming when describing a cluster (others: node:<ip>, object store ...).
_NAMED_RESOURCES = tuple(DEVICE_RESOURCES.values())
_GIB = 1024**3


@dataclass(frozen=True)
class ReplicaDemand:
    """What one replica of a model asks Ray for: one bundle (tp_size 1), or tp_size
    bundles packed on one node (a STRICT_PACK placement group)."""

    model: str
    device: str
    tp_size: int
    bundles: tuple[dict[str, float], ...]

    @property
    def total(self) -> dict[str, float]:
        """The bundles summed: what one node must hold."""
        out: dict[str, float] = {}
        for bundle in self.bundles:
            for name, amount in bundle.items():
                out[name] = out.get(name, 0) + amount
        return out

    def describe(self) -> str:
        if len(self.bundles) == 1:
            return f"{_format(self.bundles[0])} per replica"
        return f"{len(self.bundles)} x {_format(self.bundles[0])} on one node per replica"


def replica_demand(model: ModelConfig, device: str) -> ReplicaDemand:
    """The demand of one replica of `model`, from the very options Serve is given;
    `device` is what `device: auto` resolved to on this cluster."""
    model_device = model.resolve_device(device)
    options = model.serve_deployment_options(model_device)
    if "placement_group_bundles" in options:
        bundles = tuple(dict(b) for b in options["placement_group_bundles"])
    else:
        bundles = (_actor_bundle(options["ray_actor_options"]),)
    return ReplicaDemand(model.name, model_device, model.tp_size, bundles)


def static_problems(config: ServeConfig) -> list[str]:
    """What the config alone shows cannot run: a tp_size the model's KV heads do not
    allow, or tp_size > 1 for a family tensor parallelism does not run (models whose folder
    is not on this machine are skipped)."""
    from sharding.model_spec import ModelSpec
    from sharding.planner import runs_tp, valid_tp_sizes

    problems = []
    for index, model in enumerate(config.models):
        if model.tp_size == 1:
            continue
        try:
            path = model.resolved_path()
        except OSError:  # a provided model not prepared on this machine
            continue
        if not (path / "config.json").is_file():
            continue
        spec = ModelSpec.from_path(path)
        valid = valid_tp_sizes(spec)
        if model.tp_size not in valid:
            why = (
                f"has {spec.num_kv_heads} KV heads, which tp_size {model.tp_size} does not divide"
                if runs_tp(spec)
                else f"is a {spec.family_type or spec.model_type} model, which tensor "
                "parallelism does not run yet"
            )
            problems.append(
                f"models.{index}.tp_size: model {model.name!r} ({path}) {why}; "
                f"valid tp_size values: {valid}"
            )
    return problems


def cluster_problems(demands: list[ReplicaDemand], nodes: list[dict[str, float]]) -> list[str]:
    """One line per model whose replica no node of the cluster can hold, even empty."""
    problems = []
    for demand in demands:
        need = demand.total
        if any(_fits(need, node) for node in nodes):
            continue
        missing = [n for n in need if n in _NAMED_RESOURCES and not _cluster_has(n, nodes)]
        why = f"the cluster has no {', no '.join(missing)}" if missing else "no node is that big"
        problems.append(
            f"model {demand.model!r} (device {demand.device}, tp_size {demand.tp_size}) needs "
            f"{demand.describe()}, and {why}: {describe_nodes(nodes)}"
        )
    return problems


def describe_nodes(nodes: list[dict[str, float]]) -> str:
    """'2 node(s): CPU 4, memory 16.0 GiB | CPU 8, HPU 8, memory 64.0 GiB'."""
    parts = []
    for node in nodes:
        named = [f"{n} {node[n]:g}" for n in _NAMED_RESOURCES if node.get(n)]
        parts.append(", ".join([*named, f"memory {node.get('memory', 0) / _GIB:.1f} GiB"]))
    return f"{len(nodes)} node(s): " + " | ".join(parts) if parts else "no alive node"


def _actor_bundle(actor_options: dict[str, Any]) -> dict[str, float]:
    bundle = {
        "CPU": actor_options.get("num_cpus", 1),
        "GPU": actor_options.get("num_gpus", 0),
        **actor_options.get("resources", {}),
    }
    return {name: amount for name, amount in bundle.items() if amount}


def _fits(need: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(name, 0) >= amount for name, amount in need.items())


def _cluster_has(resource: str, nodes: list[dict[str, float]]) -> bool:
    return any(node.get(resource, 0) > 0 for node in nodes)


def _format(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{name!r}: {amount:g}" for name, amount in bundle.items()) + "}"
