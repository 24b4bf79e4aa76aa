"""Which share of a step an op belongs to, from its name and the module it ran in.

Categories, in the order they win when ops overlap in time:
- "communication": collectives (all_reduce, all_gather, ...), whatever library runs them;
- "attention": the attention core (everything an attention module does outside its
  projection layers: rotary embedding, KV-cache writes and gathers, scores, softmax), or an
  op named like attention (sdpa, flash) anywhere;
- "matmul": matrix multiplies (linear, mm, bmm, gemm kernels; Gaudi's MME);
- "elementwise": every other device op (activations, norms, adds, copies, sampling).
"""

from __future__ import annotations

import re

CATEGORIES = ("matmul", "attention", "elementwise", "communication")
# the categories of a step's wall time that are not device ops
GAP_CATEGORIES = ("host", "idle")
SHARE_CATEGORIES = (*CATEGORIES, *GAP_CATEGORIES)
# overlapping device intervals count once, for the first category here
PRIORITY = ("communication", "attention", "matmul", "elementwise")

_COMMUNICATION = re.compile(
    r"all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|c10d::|nccl|hccl|gloo",
    re.IGNORECASE,
)
_ATTENTION = re.compile(r"scaled_dot_product|flash|attention|sdpa|fmha", re.IGNORECASE)
_MATMUL = re.compile(r"\b(aten::)?(linear|mm|addmm|bmm|baddbmm|matmul|einsum)\b|gemm|mme", re.I)
_ATTENTION_MODULE = re.compile(r"(attn|attention)$", re.IGNORECASE)
_PROJECTION = re.compile(r"(q|k|v|o|qkv|out|c)_?proj$|(query|key|value|dense)$", re.IGNORECASE)


def is_attention_core(module_path: str | None) -> bool:
    """Whether `module_path` (the innermost module an op ran in, e.g.
    "model.layers.0.self_attn") is an attention module itself, not one of its projections."""
    if not module_path:
        return False
    last = module_path.rsplit(".", 1)[-1]
    return bool(_ATTENTION_MODULE.search(last)) and not _PROJECTION.search(last)


def classify(op_name: str, module_path: str | None = None) -> str:
    """The category (one of CATEGORIES) of device op `op_name` that ran inside the module
    `module_path` (None when unknown: a graph replay, a device kernel)."""
    if _COMMUNICATION.search(op_name):
        return "communication"
    if is_attention_core(module_path) or _ATTENTION.search(op_name):
        return "attention"
    if _MATMUL.search(op_name):
        return "matmul"
    return "elementwise"
