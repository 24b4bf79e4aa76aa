"""gaudi-serve on Ray Serve: one `LLMServer` deployment per model behind an HTTP ingress
(OpenAI + TGI APIs), built from a YAML config by `build_app`.

    from ray import serve
    from deployments import build_app, load_config

    serve.run(build_app(load_config("serve.yaml")), name="gaudi-serve", route_prefix="/")

Names are imported lazily, so `import deployments` (or `deployments.config`) loads neither
Ray Serve nor torch.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

IMPORTED_AT = time.time()  # when a replica's code began to load (autoscaling start-up)

# public name -> module that defines it
_EXPORTS = {
    "APP_NAME": "deployments.app",
    "build_app": "deployments.app",
    "ConfigError": "deployments.config",
    "ModelConfig": "deployments.config",
    "ServeConfig": "deployments.config",
    "load_config": "deployments.config",
    "parse_config": "deployments.config",
    "LLMServer": "deployments.server",
    "Ingress": "deployments.ingress",
    "LLMClient": "deployments.client",
    "GenerationChunk": "deployments.generation",
    "GeneratedToken": "deployments.generation",
    "InvalidRequestError": "deployments.generation",
    "EngineUnavailableError": "deployments.generation",
    "ModelInfo": "deployments.generation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
