"""How long a rendered deployment may take to become Ready, sized from its models.

A RayService is Ready once every replica has loaded its weights and warmed up (captured
its graphs), which takes minutes for large models; pods become ready long before (KubeRay's
probes check the raylet and Serve's proxy, which start in seconds whatever the model). So
the time to allow is that of whatever waits for the RayService's Ready condition
(`kubectl wait`, a CI or GitOps timeout), and the renderer writes it on the RayService as
the READY_TIMEOUT_ANNOTATION annotation.

The rule, per model, then the largest (replicas warm up in parallel):
    10 minutes (scheduling, image start, Ray, building the app)
    + 1 minute per started billion parameters on each TP rank (loading and warm-up scale
      with the shard a rank holds), counting a speculative draft model's with the target's.
70B at tp 8: 600 + 60 * ceil(70.6 / 8) = 1140 s; 8B at tp 2: 900 s; the bundled model:
660 s. A model whose config.json cannot be read where you render is given
UNKNOWN_MODEL_READY_TIMEOUT_S. These are conservative defaults, not measurements: time
your own first deployment and adjust.
"""

from __future__ import annotations

import math
from pathlib import Path

from deployments.config import ModelConfig, ServeConfig

__all__ = [
    "READY_TIMEOUT_ANNOTATION",
    "UNKNOWN_MODEL_READY_TIMEOUT_S",
    "model_ready_timeout_s",
    "ready_timeout_s",
]

READY_TIMEOUT_ANNOTATION = "gaudi-serve/ready-timeout"
BASE_READY_TIMEOUT_S = 600
READY_TIMEOUT_S_PER_BILLION_PER_RANK = 60
UNKNOWN_MODEL_READY_TIMEOUT_S = 1800


def ready_timeout_s(config: ServeConfig) -> int:
    """Seconds to allow the whole deployment to become Ready (the largest of its models)."""
    return max(model_ready_timeout_s(model) for model in config.models)


def model_ready_timeout_s(model: ModelConfig) -> int:
    """Seconds to allow one model's replicas to load and warm up (the module's rule)."""
    try:
        paths = [model.resolved_path()]
        spec = model.speculative
        draft = spec.resolved_draft_model() if spec is not None else None
    except OSError:  # a provided model not prepared here: it is in the image or a volume
        return UNKNOWN_MODEL_READY_TIMEOUT_S
    if draft is not None:
        paths.append(draft)
    counts = [_num_params(path) for path in paths]
    if None in counts:
        return UNKNOWN_MODEL_READY_TIMEOUT_S
    billions_per_rank = math.ceil(sum(counts) / model.tp_size / 1e9)
    return BASE_READY_TIMEOUT_S + READY_TIMEOUT_S_PER_BILLION_PER_RANK * billions_per_rank


def _num_params(model_dir: Path) -> int | None:
    """The parameter count from the model's config.json, None when it is not readable here
    (the folder is in the image or on a volume of the cluster)."""
    from sharding.model_spec import ModelSpec

    try:
        return ModelSpec.from_path(model_dir).num_params
    except OSError:
        return None
