"""Device backends behind one interface; each backend module is imported only when chosen.

>>> get_device("cpu").name
'cpu'
"""

from __future__ import annotations

import importlib

from engine.devices.base import Device, MemoryStats

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
    "get_device",
    "resolve_device_name",
]


def _hpu_available() -> bool:
    try:
        importlib.import_module("habana_frameworks.torch")
    except ImportError:
        return False
    return True


def resolve_device_name(name: str = "auto") -> str:
    """'auto' -> hpu if habana_frameworks.torch imports, else cuda if available, else cpu."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {list(DEVICE_CHOICES)}, got {name!r}")
    if name != "auto":
        return name
    if _hpu_available():
        return "hpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_device(name: str = "auto", index: int = 0) -> Device:
    """Instantiate the backend called `name` (see DEVICE_CHOICES)."""
    module, cls = BACKENDS[resolve_device_name(name)]
    return getattr(importlib.import_module(module), cls)(index)
