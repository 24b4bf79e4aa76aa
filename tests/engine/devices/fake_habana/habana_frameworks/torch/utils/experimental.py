"""FAKE `habana_frameworks.torch.utils.experimental`: which Gaudi generation the card is
(`_get_device_type`, as Intel Neural Compressor asks it). Tests may set DEVICE_TYPE."""

import enum

from habana_frameworks import record


class synDeviceType(enum.Enum):  # the real bridge's name
    synDeviceGaudi = 1
    synDeviceGaudi2 = 2
    synDeviceGaudi3 = 3


DEVICE_TYPE = synDeviceType.synDeviceGaudi2  # the fake's one card (94 GiB: a Gaudi2)


def _get_device_type() -> synDeviceType:
    record("utils.experimental._get_device_type")
    return DEVICE_TYPE
