"""What an audit found: findings grouped by (category, op, module path), with counts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

__all__ = ["OUTSIDE_PATH", "ROOT_PATH", "AuditReport", "Category", "Finding"]

ROOT_PATH = "<root>"  # the audited model's own forward, outside every submodule
OUTSIDE_PATH = "<outside>"  # traced code that runs outside the model's forward


class Category(str, Enum):
    DYNAMIC_SHAPE = "dynamic-shape"  # output shape depends on tensor values
    HOST_SYNC = "host-sync"  # the host waits for a device value (or copies a tensor back)
    GAUDI_LISTED = "gaudi-listed"  # on the project's list of ops unsupported/slow on Gaudi


@dataclass(frozen=True)
class Finding:
    """One op seen `count` times in one module. `op` is an aten overload
    ("aten.nonzero.default") or a Tensor method that never reaches the dispatcher on the
    CPU ("Tensor.tolist"). `source` says where a Gaudi-listed entry comes from;
    `location` is the first Python line ("transformers/masking_utils.py:307") that ran it."""

    category: Category
    op: str
    module_path: str
    count: int
    reason: str
    source: str | None = None
    location: str | None = None

    def to_dict(self) -> dict:
        return {
            "category": self.category.value,
            "op": self.op,
            "module_path": self.module_path,
            "count": self.count,
            "reason": self.reason,
            "source": self.source,
            "location": self.location,
        }


@dataclass(frozen=True)
class AuditReport:
    """Findings in the order they were first seen (so in forward order).

    model_name: class name of the audited model; num_ops: aten ops traced in total.
    """

    model_name: str
    findings: tuple[Finding, ...]
    num_ops: int

    @property
    def is_clean(self) -> bool:
        return not self.findings

    def by_category(self, category: Category) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.category is category)

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "is_clean": self.is_clean,
            "num_ops": self.num_ops,
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        """A readable table, one row per finding."""
        if self.is_clean:
            return (
                f"audit of {self.model_name}: clean ({self.num_ops} aten ops traced; no "
                f"dynamic-shape op, host sync or Gaudi-listed op)"
            )
        header = ("category", "op", "count", "module", "where", "reason")
        rows = [
            (f.category.value, f.op, str(f.count), f.module_path, f.location or "?", f.reason)
            for f in self.findings
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        lines = [
            f"audit of {self.model_name}: {len(self.findings)} findings "
            f"({self.num_ops} aten ops traced)",
            "",
        ]
        for row in [header, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        return "\n".join(lines)
