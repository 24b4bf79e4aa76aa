"""`gaudi-serve config ACTION FILE`: work with a serving config file.

    gaudi-serve config check serve.yaml

`check` validates the file and prints a summary of the models (exit 0), or prints every
problem, one per line, and exits 2. Nothing here imports Ray or torch.
"""

from __future__ import annotations

import argparse
import sys

from deployments.config import ConfigError, ModelConfig, ServeConfig, load_config

EXIT_INVALID = 2
ACTIONS = ("check",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="check: validate FILE and summarise it")
    parser.add_argument("file", metavar="FILE", help="the serving config (YAML)")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    print(summarize(config, args.file))
    return 0


def summarize(config: ServeConfig, source: str) -> str:
    """A few lines describing a valid config: where it listens and what each model runs."""
    lines = [
        f"{source}: valid",
        f"http: {config.http.host}:{config.http.port}",
        f"models ({len(config.models)}):",
    ]
    lines += [f"  {_describe_model(model)}" for model in config.models]
    return "\n".join(lines)


def _describe_model(model: ModelConfig) -> str:
    path = str(model.path) if model.path is not None else "bundled default"
    parts = [
        f"{model.name}: path={path}",
        f"device={model.device}",
        f"dtype={model.dtype}",
        f"tp={model.tp_size}",
        f"replicas={_describe_replicas(model)}",
        f"max_num_seqs={model.engine.max_num_seqs}",
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
    return f"autoscaling {scaling.min_replicas}..{scaling.max_replicas} (initial {initial})"
