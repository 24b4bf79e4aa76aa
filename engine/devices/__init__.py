"""Device backends behind one interface; each backend module is imported only when chosen.

>>> get_device("cpu").name
'cpu'
"""

from __future__ import annotations

import importlib

from engine.devices.base import Device, MemoryStats, available_device_names

# name -> (module, class); modules are imported lazily so `import engine` needs no vendor package.
BACKENDS: dict[str, tuple[str, str]] = {
    "cpu": ("engine.devices.cpu", "CpuDevice"),
    "cuda": ("engine.devices.cuda", "CudaDevice"),
    "hpu": ("engine.devices.hpu", "HpuDevice"),
}
DEVICE_CHOICES = ("auto", *BACKENDS)

__all__ = [
    "BACKENDS",
    "DEVICE_CHOICES",
    "Device",
    "MemoryStats",
    "available_device_names",
    "get_device",
    "resolve_device_name",
]


def resolve_device_name(name: str = "auto") -> str:
    """'auto' -> hpu if the Habana bridge is installed, else cuda if available, else cpu.
    NOTE: probes without importing the bridge (importing it fixes lazy vs eager mode)."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {list(DEVICE_CHOICES)}, got {name!r}")
    if name != "auto":
        return name
    return available_device_names()[0]


def get_device(name: str = "auto", index: int = 0) -> Device:
    """Instantiate the backend called `name` (see DEVICE_CHOICES)."""
    module, cls = BACKENDS[resolve_device_name(name)]
    return getattr(importlib.import_module(module), cls)(index)
