"""The CUDA backend on a machine without CUDA: importable, and a clear error when chosen.
Its GPU behaviour is tested in test_cuda_gpu.py (marked `cuda`)."""

from __future__ import annotations

import sys

import pytest
import torch

from engine.devices import get_device, resolve_device_name
from engine.devices.base import DeviceUnavailableError


def test_backends_are_imported_only_when_chosen(no_habana, monkeypatch):
    for name in ("engine.devices.cuda", "engine.devices.hpu"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert get_device("cpu").name == "cpu"
    assert resolve_device_name("auto") in ("cpu", "cuda")
    vendor = ("engine.devices.cuda", "engine.devices.hpu", "habana_frameworks")
    assert [m for m in sys.modules if m.startswith(vendor)] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_names_the_available_devices(no_habana):
    from engine.devices.cuda import CudaDevice  # importing the backend needs no GPU

    assert (CudaDevice.name, CudaDevice.dist_backend, CudaDevice.has_graphs) == (
        "cuda",
        "nccl",
        True,
    )
    with pytest.raises(DeviceUnavailableError) as err:
        get_device("cuda")
    assert "device 'cuda' is not available here" in str(err.value)
    assert "devices available on this machine: ['cpu']" in str(err.value)
