"""`gaudi-serve config ACTION FILE`: work with a serving config file.

    gaudi-serve config check serve.yaml
    gaudi-serve config render serve.yaml --accelerator gaudi | kubectl apply -f -
    gaudi-serve config render serve.yaml --kustomize k8s/

`check` validates the file, and what it can tell without a cluster (a tp_size the local
model's KV heads do not allow), and prints a summary of the models (exit 0), or prints every
problem, one per line, and exits 2. `render` validates it the same way (model folders need
not exist here) and prints it as Kubernetes manifests (a ConfigMap holding the config and a
KubeRay RayService, see deployments.k8s), writes them to -o OUT, or writes a kustomize tree
(base + one overlay per accelerator) under --kustomize DIR. Nothing here imports Ray or
torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cluster.commands.preflight import static_problems
from deployments import k8s
from deployments.config import ConfigError, ModelConfig, ServeConfig, load_config
from deployments.k8s.kustomize import render_kustomize_tree

EXIT_INVALID = 2
ACTIONS = ("check", "render")
RENDER_OPTIONS = (
    "image",
    "accelerator",
    "namespace",
    "name",
    "output",
    "kustomize",
    "model_volume",
    "cpus_per_card",
    "memory_per_card",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=ACTIONS,
        help="check: validate FILE and summarise it; render: print it as Kubernetes manifests",
    )
    parser.add_argument("file", metavar="FILE", help="the serving config (YAML)")
    render = parser.add_argument_group("render options")
    render.add_argument(
        "--accelerator",
        choices=list(k8s.ACCELERATORS),
        help=f"what `device: auto` means in the cluster (default {k8s.DEFAULT_ACCELERATOR})",
    )
    render.add_argument(
        "--image", help="container image of every pod (default: gaudi-serve:<accelerator>)"
    )
    render.add_argument("--namespace", metavar="NS", help="namespace of every object")
    render.add_argument("--name", help=f"name of the RayService (default {k8s.DEFAULT_NAME})")
    render.add_argument(
        "--model-volume",
        metavar="pvc:CLAIM[:MOUNT]|hostPath:/PATH[:MOUNT]",
        help="mount the model weights read-only in every pod, at MOUNT "
        f"(default {k8s.DEFAULT_MODEL_MOUNT}); model paths in the config lie under it",
    )
    render.add_argument(
        "--cpus-per-card",
        type=int,
        metavar="N",
        help="CPU cores a worker pod asks for per card (default: the accelerator's)",
    )
    render.add_argument(
        "--memory-per-card",
        type=int,
        metavar="GIB",
        help="memory in GiB a worker pod asks for per card (default: the accelerator's)",
    )
    where = render.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="OUT", help="write the manifests to OUT")
    where.add_argument(
        "--kustomize",
        metavar="DIR",
        help="write a kustomize tree: DIR/base (rendered for cpu), DIR/overlays/<accelerator>",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "check":
        given = [
            f"--{o.replace('_', '-')}" for o in RENDER_OPTIONS if getattr(args, o, None) is not None
        ]
        if given:
            print(f"config check: {', '.join(given)} only apply to render", file=sys.stderr)
            return EXIT_INVALID
    try:
        config = load_config(args.file, check_paths=args.action == "check")
    except ConfigError as exc:
        return _report(args.file, exc.problems)
    if args.action == "render":
        return _render(config, args)
    problems = static_problems(config)
    if problems:
        return _report(args.file, problems)
    print(summarize(config, args.file))
    return 0


def _report(source: str, problems: list[str]) -> int:
    print(f"{source}: {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_INVALID


def _render(config: ServeConfig, args: argparse.Namespace) -> int:
    """Print or write the manifests of `config`; exit 2 for what cannot run in pods."""
    options, problems = _render_options(args)
    if options is None or problems:
        return _report(args.file, problems)
    try:
        if args.kustomize is not None:
            tree = render_kustomize_tree(config, options)
            files = {Path(args.kustomize) / relative: text for relative, text in tree.items()}
        else:
            text = k8s.to_yaml(k8s.render_manifests(config, options))
            if args.output is None:
                sys.stdout.write(text)
                return 0
            files = {Path(args.output): text}
    except ConfigError as exc:
        return _report(args.file, exc.problems)
    for path, content in files.items():
        _write(path, content)
    return 0


def _render_options(args: argparse.Namespace) -> tuple[k8s.K8sOptions | None, list[str]]:
    """(options or None, problems): the command line's options, and what in the file or
    the options cannot be rendered (relative model paths, conflicting options)."""
    with open(args.file, encoding="utf-8") as stream:
        problems = k8s.relative_path_problems(yaml.safe_load(stream))
    if args.kustomize is not None and args.accelerator is not None:
        problems.append("--accelerator does not apply with --kustomize (it renders them all)")
    try:
        volume = None if args.model_volume is None else k8s.ModelVolume.parse(args.model_volume)
        options = k8s.K8sOptions(
            accelerator=args.accelerator or k8s.DEFAULT_ACCELERATOR,
            image=args.image,
            namespace=args.namespace,
            name=args.name or k8s.DEFAULT_NAME,
            model_volume=volume,
            cpus_per_card=args.cpus_per_card,
            memory_gib_per_card=args.memory_per_card,
        )
    except ValueError as exc:
        return None, [*problems, f"--{exc}"]
    return options, problems


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


def summarize(config: ServeConfig, source: str) -> str:
    """A few lines describing a valid config: where it listens and what each model runs."""
    lines = [
        f"{source}: valid",
        f"http: {config.http.host}:{config.http.port}",
        f"models ({len(config.models)}):",
    ]
    lines += [f"  {_describe_model(model)}" for model in config.models]
    return "\n".join(lines)


def _provided_model(name: str) -> str:
    """What a path-less model entry serves: SmolLM2 by its name, pycoder otherwise."""
    from engine.assets import PREPARED_MODEL_NAMES

    return "prepared default" if name in PREPARED_MODEL_NAMES else "bundled default"


def _describe_model(model: ModelConfig) -> str:
    path = str(model.path) if model.path is not None else _provided_model(model.name)
    parts = [
        f"{model.name}: path={path}",
        f"device={model.device}",
        f"dtype={model.dtype}",
        f"tp={model.tp_size}",
        f"replicas={_describe_replicas(model)}",
        f"max_num_seqs={model.engine.max_num_seqs}",
        f"admission={_describe_admission(model)}",
        f"drain_timeout_s={model.serve.drain_timeout_s:g}",
        f"cold_start_timeout_s={model.serve.cold_start_timeout_s:g}",
    ]
    if model.speculative is not None:
        spec = model.speculative
        parts.append(f"speculative={spec.method}(k={spec.num_speculative_tokens})")
    return " ".join(parts)


def _describe_replicas(model: ModelConfig) -> str:
    scaling = model.serve.autoscaling
    if scaling is None:
        return str(model.serve.num_replicas or 1)
    initial = scaling.min_replicas if scaling.initial_replicas is None else scaling.initial_replicas
    replicas = f"autoscaling {scaling.min_replicas}..{scaling.max_replicas} (initial {initial})"
    return f"{replicas} policy={_describe_policy(model)}"


def _describe_admission(model: ModelConfig) -> str:
    limit = model.serve.max_queue_wait_s
    if limit is None:
        return "off"
    return f"max_queue_wait_s={limit:g} at {model.serve.max_replicas} replica(s)"


def _describe_policy(model: ModelConfig) -> str:
    """The effective autoscaling policy and its knobs, defaults included."""
    scaling = model.serve.autoscaling
    if scaling.policy == "ongoing_requests":
        return f"ongoing_requests(target_ongoing_requests={scaling.target_ongoing_requests:g})"
    config = scaling.slo_policy_config(model.serve.slo, model.engine)
    knobs = (
        "ttft_s",
        "tpot_s",
        "target_utilization",
        "scale_down_utilization",
        "downscale_delay_s",
        "demand_window_s",
        "forecast_window_s",
        "rate_window_s",
        "default_startup_s",
    )
    upscale_delay_s = scaling.upscale_delay_s or 0.0
    values = [f"{name}={getattr(config, name):g}" for name in knobs]
    return f"slo({', '.join(values)}, upscale_delay_s={upscale_delay_s:g})"
