"""The executor factory of a gaudi-serve process that may run tensor parallelism.

The engine never imports this package: callers that serve (deployments.server, the CLI)
pass `create_executor` as the engine's `executor_factory`, and an engine built without one
finds it for tp_size > 1 through the entry point `tensor_parallel` of the group
`gaudi_serve.executors` (pyproject.toml).

    from engine import LLM
    from sharding.factory import create_executor

    llm = LLM(model_dir, tp_size=2, executor_factory=create_executor)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine import EngineConfig, Executor


def create_executor(config: EngineConfig, model_path: Path) -> Executor:
    """The engine's LocalExecutor for tp_size 1; otherwise a TPExecutor over tp_size Ray
    rank actors. NOTE: imports lazily, so importing this module loads neither Ray nor torch."""
    if config.tp_size == 1:
        from engine import create_local_executor

        return create_local_executor(config, model_path)
    from sharding.executor import TPExecutor

    return TPExecutor(model_path, config)
