"""The dynamic-op audit: trace a model's forward and report what breaks static shapes.

It flags (a) ops with data-dependent output shapes and host synchronisations, and (b) ops
on the project's list of ops unsupported or slow on Gaudi (`engine.audit.gaudi_ops`),
each with the module path where it ran and a count. `gaudi-serve audit` is its CLI.

    report = audit_forward(model, lambda: model(input_ids))
    print(report.format())
"""

from engine.audit.gaudi_ops import GAUDI_OPS, GaudiOpNote
from engine.audit.model import audit_model, transformers_forward
from engine.audit.report import OUTSIDE_PATH, ROOT_PATH, AuditReport, Category, Finding
from engine.audit.tracer import audit_forward

__all__ = [
    "GAUDI_OPS",
    "OUTSIDE_PATH",
    "ROOT_PATH",
    "AuditReport",
    "Category",
    "Finding",
    "GaudiOpNote",
    "audit_forward",
    "audit_model",
    "transformers_forward",
]
