"""Ray resource names of gaudi-serve's devices: the one place that says a `cuda` card is
Ray's built-in "GPU" resource and an `hpu` card the custom "HPU" resource.

A leaf module with no imports, so the serving config, the app, the TP executor and the
Kubernetes renderer all read it without loading Ray or torch. It lives in `cluster/`
(Ray infrastructure) rather than `engine/devices`, because the engine never speaks Ray.

>>> ray_resource("hpu"), card_resource("cpu"), device_of_cluster({"CPU": 8, "GPU": 2})
('HPU', None, 'cuda')
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ACCELERATOR_DEVICES",
    "DEVICE_RESOURCES",
    "assigned_card_ids",
    "card_resource",
    "device_of_cluster",
    "ray_resource",
]

# device (engine.devices.BACKENDS) -> the Ray resource one card (one TP rank) takes
DEVICE_RESOURCES = {"cpu": "CPU", "cuda": "GPU", "hpu": "HPU"}
# Accelerator devices, in the order `device: auto` prefers them in a cluster.
ACCELERATOR_DEVICES = ("hpu", "cuda")


def ray_resource(device: str) -> str:
    """The Ray resource of one `device` card ("CPU" for cpu)."""
    if device not in DEVICE_RESOURCES:
        raise ValueError(f"device must be one of {list(DEVICE_RESOURCES)}, got {device!r}")
    return DEVICE_RESOURCES[device]


def card_resource(device: str) -> str | None:
    """The accelerator resource of one `device` card; None for cpu (a CPU rank takes a
    share of CPUs, not a card)."""
    resource = ray_resource(device)
    return None if device == "cpu" else resource


def device_of_cluster(resources: Mapping[str, float]) -> str:
    """The device `auto` means in a cluster with these total resources: its preferred
    accelerator (ACCELERATOR_DEVICES) with at least one card, else cpu."""
    for device in ACCELERATOR_DEVICES:
        if resources.get(DEVICE_RESOURCES[device], 0) > 0:
            return device
    return "cpu"


def assigned_card_ids(accelerator_ids: Mapping[str, list[str]]) -> tuple[str, ...]:
    """The card ids Ray assigned to this worker (`get_accelerator_ids()`), of whichever
    accelerator it has; () on cpu."""
    for device in ACCELERATOR_DEVICES:
        ids = accelerator_ids.get(DEVICE_RESOURCES[device])
        if ids:
            return tuple(ids)
    return ()
