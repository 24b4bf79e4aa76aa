"""Classify one aten op call: which audit categories it falls in, and why.

Dynamic-shape ops come from PyTorch's own `dynamic_output_shape` tag, refined by the
arguments (indexing with a long tensor is static, with a bool mask it is not), plus the
boolean-mask writes that hide a nonzero inside. Host syncs come from the
`data_dependent_output` tag (`_local_scalar_dense`: `.item()`, `bool()`, `int()`, Python
control flow on a tensor), ops that return a Python value, and device-to-host copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.audit.gaudi_ops import GAUDI_OPS
from engine.audit.report import Category

__all__ = ["Classification", "classify_op", "packet_name"]

# (category, reason, source or None)
Classification = tuple[Category, str, str | None]

_DYNAMIC_REASONS = {
    "aten.nonzero": "output length = number of non-zero elements",
    "aten.masked_select": "output length = number of True mask elements",
    "aten._unique": "output length = number of distinct values",
    "aten._unique2": "output length = number of distinct values",
    "aten.unique_dim": "output length = number of distinct values",
    "aten.unique_consecutive": "output length = number of value runs",
    "aten.bincount": "output length = max(input) + 1",
}
_BOOL_MASK_READ = "boolean-mask indexing: output length = number of True mask elements"
_BOOL_MASK_WRITE = "boolean-mask write: the mask is turned into indices (a hidden nonzero)"
_HOST_VALUE = "reads a tensor value on the host (.item(), bool(), int(), control flow)"
_HOST_BOOL = "returns a Python bool: the host waits for the device"
_HOST_COPY = "copies a device tensor to the host"


def packet_name(func: torch._ops.OpOverload) -> str:
    """The overload packet of an op, e.g. "aten.nonzero" for aten.nonzero.default."""
    return str(func.overloadpacket)


def classify_op(
    func: torch._ops.OpOverload, args: Sequence[object], kwargs: dict[str, object]
) -> list[Classification]:
    """Every category `func(*args, **kwargs)` falls in (empty for a static, device-only op)."""
    name = packet_name(func)
    found: list[Classification] = []
    dynamic = _dynamic_reason(func, name, args, kwargs)
    if dynamic is not None:
        found.append((Category.DYNAMIC_SHAPE, dynamic, None))
    sync = _host_sync_reason(func, name, args, kwargs)
    if sync is not None:
        found.append((Category.HOST_SYNC, sync, None))
    note = GAUDI_OPS.get(name)
    if note is not None:
        found.append((Category.GAUDI_LISTED, note.reason, note.source))
    return found


def _dynamic_reason(func, name: str, args, kwargs) -> str | None:
    if name == "aten.index":
        return _BOOL_MASK_READ if _has_bool_index(args[1]) else None
    if name in ("aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
        return _BOOL_MASK_WRITE if _has_bool_index(args[1]) else None
    if name in ("aten.masked_scatter", "aten.masked_scatter_"):
        return "masked_scatter: number of source elements read = number of True mask elements"
    if name == "aten.repeat_interleave":
        if kwargs.get("output_size") is None and _is_tensor_overload(func):
            return "repeat_interleave with tensor repeats and no output_size: length = sum"
        return None
    if name == "aten.one_hot":
        num_classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
        return "one_hot without num_classes: width = max(input) + 1" if num_classes == -1 else None
    if torch.Tag.dynamic_output_shape in func.tags:
        return _DYNAMIC_REASONS.get(name, "output shape depends on the input values")
    return None


def _host_sync_reason(func, name: str, args, kwargs) -> str | None:
    if torch.Tag.data_dependent_output in func.tags or name == "aten.is_nonzero":
        return _HOST_VALUE
    if name in ("aten.equal", "aten.allclose"):
        return _HOST_BOOL
    if name == "aten._to_copy":
        target = kwargs.get("device")
        if target is not None and _is_host(target) and not _is_host(args[0].device):
            return _HOST_COPY
    if name == "aten.copy_":
        dst, src = args[0], args[1]
        if _is_host(dst.device) and isinstance(src, torch.Tensor) and not _is_host(src.device):
            return _HOST_COPY
    return None


def _has_bool_index(indices: object) -> bool:
    if not isinstance(indices, (list, tuple)):
        return False
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


def _is_tensor_overload(func) -> bool:
    # repeat_interleave.Tensor (repeats only) and .self_Tensor take a repeats tensor.
    return func._overloadname in ("Tensor", "self_Tensor")


def _is_host(device: object) -> bool:
    return torch.device(device).type == "cpu"
