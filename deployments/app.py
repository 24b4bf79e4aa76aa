"""The Serve application: one `LLMServer` deployment per model behind one `Ingress`.

    from deployments import build_app, load_config
    serve.run(build_app(load_config("serve.yaml")), name="gaudi-serve", route_prefix="/")

or from the command line, with the config file named by GAUDI_SERVE_CONFIG (default: the
bundled model with every option at its default) and what `device: auto` means named by
GAUDI_SERVE_DEVICE (default: probe the cluster):

    GAUDI_SERVE_CONFIG=serve.yaml serve run deployments.app:app

`app` is built on first access (PEP 562), so importing this module neither reads the
config nor needs the bundled model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.serve import Application

from cluster.resources import device_of_cluster
from deployments.config import APP_NAME, ServeConfig, load_config
from deployments.ingress import Ingress
from deployments.server import LLMServer

if TYPE_CHECKING:
    from engine import ExecutorFactory

INGRESS_EXTRA_REQUESTS = 16


def build_app(
    config: ServeConfig,
    *,
    device: str | None = None,
    executor_factory: ExecutorFactory | None = None,
) -> Application:
    """The application for `config`: deployment name = model name.

    `device` is where models with `device: auto` run; default: the cluster's accelerator
    (HPU, else GPU, else CPU) if Ray is connected, else this machine's.
    `executor_factory` builds every replica's executor; None means sharding's (local for
    tp_size 1, a tensor-parallel group of Ray actors otherwise).
    """
    device = device or cluster_device()
    servers = {}
    for model in config.models:
        model_device = model.resolve_device(device)
        options = model.serve_deployment_options(model_device)
        servers[model.name] = LLMServer.options(name=model.name, **options).bind(
            model, model_device, executor_factory
        )
    max_ongoing = {m.name: _max_ongoing_requests(m) for m in config.models}
    # The ingress only forwards: it must admit everything the models can take (Serve's
    # default of 5 in flight would queue requests in the proxy), plus /metrics and /health.
    ingress_limit = sum(max_ongoing.values()) + INGRESS_EXTRA_REQUESTS
    cold_start = {m.name: m.serve.cold_start_timeout_s for m in config.models}
    debug_profile = {m.name: m.serve.debug_profile for m in config.models}
    return Ingress.options(max_ongoing_requests=ingress_limit).bind(
        servers, config.models[0].name, max_ongoing, cold_start, debug_profile=debug_profile
    )


def cluster_device() -> str:
    """The device `auto` means here: from the Ray cluster's resources when connected
    (the driver may have no accelerator), else from this machine."""
    import ray

    if ray.is_initialized():
        return device_of_cluster(ray.cluster_resources())
    from engine import resolve_device_name

    return resolve_device_name("auto")


def config_from_env() -> ServeConfig:
    """The config named by GAUDI_SERVE_CONFIG, or the default one."""
    from cluster.env import serve_config_path

    path = serve_config_path()
    return load_config(path) if path is not None else ServeConfig.default()


def _max_ongoing_requests(model) -> int:
    scaling = model.serve.autoscaling
    num_replicas = scaling.max_replicas if scaling is not None else model.serve.num_replicas or 1
    return model.serve.max_ongoing_requests * num_replicas


def __getattr__(name: str) -> Any:
    if name == "app":
        from cluster.env import serve_device

        built = build_app(config_from_env(), device=serve_device())
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["APP_NAME", "build_app", "cluster_device", "config_from_env"]
