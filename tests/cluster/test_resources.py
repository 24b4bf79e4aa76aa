"""Ray resource names of the devices: one table, covering every engine device."""

from __future__ import annotations

import doctest

import pytest

import cluster.resources
from cluster.resources import (
    DEVICE_RESOURCES,
    assigned_card_ids,
    card_resource,
    device_of_cluster,
    ray_resource,
)
from engine.devices import BACKENDS


def test_docstring_examples_run():
    result = doctest.testmod(cluster.resources)
    assert result.attempted >= 1 and result.failed == 0


def test_every_engine_device_has_a_ray_resource():
    assert set(DEVICE_RESOURCES) == set(BACKENDS)


def test_resources_of_devices():
    assert [ray_resource(d) for d in ("cpu", "cuda", "hpu")] == ["CPU", "GPU", "HPU"]
    assert [card_resource(d) for d in ("cpu", "cuda", "hpu")] == [None, "GPU", "HPU"]
    with pytest.raises(ValueError, match=r"device must be one of \['cpu', 'cuda', 'hpu'\]"):
        ray_resource("tpu")


def test_auto_prefers_hpu_then_gpu_then_cpu():
    assert device_of_cluster({"CPU": 8, "GPU": 2, "HPU": 8}) == "hpu"
    assert device_of_cluster({"CPU": 8, "GPU": 2}) == "cuda"
    assert device_of_cluster({"CPU": 8, "GPU": 0}) == "cpu"


def test_assigned_card_ids_of_either_accelerator():
    assert assigned_card_ids({"GPU": ["3"], "neuron_cores": []}) == ("3",)
    assert assigned_card_ids({"HPU": ["0", "1"]}) == ("0", "1")
    assert assigned_card_ids({"GPU": []}) == ()
