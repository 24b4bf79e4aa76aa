"""Ops known to be unsupported or slow on Intel Gaudi, kept as data.

An op lands here when running it on an HPU either falls back to the host (no HPU kernel,
or no kernel for the dtype) or breaks the graph (a data-dependent output shape forces a
host sync and a recompilation per distinct size). Keys are aten overload packets
("aten.nonzero"); each entry has a one-line reason and where we know it from:

- Habana docs, "Placement of Ops on HPU": an op falls back to the CPU when it is not
  registered for the HPU or its dtype is not supported there.
- Habana docs, "Handling Dynamic Shapes": ops whose output shape depends on the input
  data cause recompilations; replace them with static-shape equivalents.
- vllm-project/vllm-gaudi PR #1617: "Complex datatype is not supported on HPU device"
  (torch.polar / view_as_complex in a rotary embedding).
- Porting experience: seen in our own ports; not found in the public docs we searched.

Add an entry when a port finds a new one, with its source.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GAUDI_OPS", "GaudiOpNote"]

OPS_PLACEMENT_DOC = (
    "Habana docs: Placement of Ops on HPU "
    "(docs.habana.ai/en/latest/PyTorch/PyTorch_User_Guide/Device_Ops_Placement.html)"
)
DYNAMIC_SHAPES_DOC = (
    "Habana docs: Handling Dynamic Shapes "
    "(docs.habana.ai/en/latest/PyTorch/Model_Optimization_PyTorch/Dynamic_Shapes.html)"
)
VLLM_GAUDI_COMPLEX = "vllm-project/vllm-gaudi PR #1617 (complex dtypes unsupported on HPU)"
PORTING_EXPERIENCE = "known from porting experience"


@dataclass(frozen=True)
class GaudiOpNote:
    reason: str
    source: str


_DATA_DEPENDENT = "data-dependent output shape: host sync and a recompile per distinct size"
_COMPLEX = "complex dtypes are not supported on HPU: use real (cos, sin) arithmetic"
_HOST_INDICES = "no HPU kernel: falls back to the host; precompute the indices once at init"

GAUDI_OPS: dict[str, GaudiOpNote] = {
    "aten.triu_indices": GaudiOpNote(_HOST_INDICES, PORTING_EXPERIENCE),
    "aten.tril_indices": GaudiOpNote(_HOST_INDICES, PORTING_EXPERIENCE),
    "aten.nonzero": GaudiOpNote(_DATA_DEPENDENT, DYNAMIC_SHAPES_DOC),
    "aten.masked_select": GaudiOpNote(_DATA_DEPENDENT, DYNAMIC_SHAPES_DOC),
    "aten._unique": GaudiOpNote(_DATA_DEPENDENT, DYNAMIC_SHAPES_DOC),
    "aten._unique2": GaudiOpNote(_DATA_DEPENDENT, DYNAMIC_SHAPES_DOC),
    "aten.unique_dim": GaudiOpNote(_DATA_DEPENDENT, DYNAMIC_SHAPES_DOC),
    "aten.unique_consecutive": GaudiOpNote(_DATA_DEPENDENT, DYNAMIC_SHAPES_DOC),
    "aten.bincount": GaudiOpNote(_DATA_DEPENDENT, DYNAMIC_SHAPES_DOC),
    "aten.view_as_complex": GaudiOpNote(_COMPLEX, VLLM_GAUDI_COMPLEX),
    "aten.view_as_real": GaudiOpNote(_COMPLEX, VLLM_GAUDI_COMPLEX),
    "aten.polar": GaudiOpNote(_COMPLEX, VLLM_GAUDI_COMPLEX),
    "aten.complex": GaudiOpNote(_COMPLEX, VLLM_GAUDI_COMPLEX),
}
