"""Device backends behind one interface; each backend module is imported only when chosen.

Importing this package loads no torch: the names and `resolve_device_name` for an explicit
name are plain Python (the serving config reads DEVICE_CHOICES through the `engine` facade),
and the interface (`Device`, `MemoryStats`, `available_device_names`, from
engine.devices.base) is imported on first use (PEP 562).

>>> get_device("cpu").name
'cpu'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.devices.base import Device, MemoryStats, available_device_names

# name -> (module, class); modules are imported lazily so `import engine` needs no vendor package.
BACKENDS: dict[str, tuple[str, str]] = {
    "cpu": ("engine.devices.cpu", "CpuDevice"),
    "cuda": ("engine.devices.cuda", "CudaDevice"),
    "hpu": ("engine.devices.hpu", "HpuDevice"),
}
DEVICE_CHOICES = ("auto", *BACKENDS)
# names engine.devices.base defines (it imports torch), loaded on first use
_FROM_BASE = ("Device", "MemoryStats", "available_device_names")

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
    NOTE: probes without importing the bridge (importing it fixes lazy vs eager mode);
    only 'auto' imports torch."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {list(DEVICE_CHOICES)}, got {name!r}")
    if name != "auto":
        return name
    from engine.devices.base import available_device_names

    return available_device_names()[0]


def get_device(name: str = "auto", index: int = 0) -> Device:
    """Instantiate the backend called `name` (see DEVICE_CHOICES)."""
    module, cls = BACKENDS[resolve_device_name(name)]
    return getattr(importlib.import_module(module), cls)(index)


def __getattr__(name: str) -> Any:
    if name not in _FROM_BASE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("engine.devices.base"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_BASE})
