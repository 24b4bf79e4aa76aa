"""`gaudi-serve audit`: trace a model's forward for dynamic ops, host syncs and ops that
are unsupported or slow on Gaudi. Exit code 0 when clean, 1 when anything is found,
2 when the model cannot be loaded."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="local Hugging Face model directory (default: the bundled default model)",
    )
    parser.add_argument(
        "--forward",
        choices=("engine", "transformers"),
        default="engine",
        help="the engine's padded paged-attention steps (default) or transformers' forward",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from engine.audit import audit_model

    try:
        report = audit_model(args.model, forward=args.forward)
    except (OSError, ValueError) as exc:
        name = args.model or "(the bundled default model)"
        print(f"gaudi-serve audit: cannot load model {name}: {exc}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else report.format())
    return 0 if report.is_clean else 1
