"""The `gaudi-serve` command line.

Each subcommand lives in its own module under `cluster.commands` exposing
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when their
subcommand runs, so `gaudi-serve plan` never imports Ray or torch it does not need.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under cluster.commands, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("generate", "generate text offline with the engine (no Ray)"),
    "up": ("up", "serve models over HTTP on a local or existing Ray cluster"),
    "status": ("status", "show the state of each application, deployment and replica"),
    "plan": ("plan", "pick the tensor-parallel degree and KV capacity for a model"),
    "audit": ("audit", "trace a model's forward for dynamic ops and host fallbacks"),
    "config": ("config", "validate a serving config file or render it for Kubernetes"),
    "models": ("models", "fetch and convert the default chat model (smollm2-135m-instruct)"),
    "profile": ("profile", "profile engine steps offline: a Perfetto trace and a time split"),
    "calibrate": ("calibrate", "measure a model's prefill and decode step times for the simulator"),
    "trace": ("trace", "write or import request traces (JSONL) for simulate and replay"),
    "simulate": ("simulate", "simulate a fleet of replicas over a trace in virtual time"),
    "replay": ("replay", "drive a running server with a trace and summarize what it measured"),
    "quantize": (
        "quantize",
        "measure a model's FP8 statistics for Gaudi (Intel Neural Compressor)",
    ),
}


def _load(module: str):
    return importlib.import_module(f"cluster.commands.{module}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gaudi-serve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported (its arguments are needed to parse).
        if name == chosen:
            _load(module).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module, _ = SUBCOMMANDS[args.command]
    return int(_load(module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
