"""Tensor parallelism: a TP group of Ray worker actors running a DeepSpeed-AutoTP-sharded
model (sharding.executor), the executor factory callers hand the engine
(sharding.factory.create_executor), the per-rank pieces it is built from (dist, autotp,
loading, worker) and the planner that picks the TP degree (sharding.planner).

Names are imported on first use, so `import sharding` (the planner CLI) loads neither Ray
nor DeepSpeed.
"""

from __future__ import annotations

import importlib

# public name -> defining module
_EXPORTS = {
    "TPExecutor": "sharding.executor",
    "create_executor": "sharding.factory",
    "TPWorker": "sharding.worker",
    "RankLoadStats": "sharding.worker",
    "RankStats": "sharding.worker",
    "GroupAddress": "sharding.dist",
    "shard_model": "sharding.autotp",
    "build_meta_model": "sharding.loading",
    "load_rank_weights": "sharding.loading",
    "ModelSpec": "sharding.model_spec",
    "Plan": "sharding.planner",
    "plan": "sharding.planner",
    "valid_tp_sizes": "sharding.planner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sharding' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
