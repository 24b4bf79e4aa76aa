"""`gaudi-serve profile`: capture N engine steps of one model under torch.profiler on a
synthetic workload; write DIR/trace.json (Chrome/Perfetto) and DIR/report.json, and print
where each step's time went (engine.profiling). Offline and tp_size 1 only, for now.
Exit code 0 on success, 2 for bad arguments or a model that cannot be loaded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "gaudi-serve profile"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None, help="serving config (YAML)")
    parser.add_argument(
        "--model",
        metavar="NAME|PATH",
        default=None,
        help="a model of --config (default: its only one), or a model folder without --config",
    )
    parser.add_argument("--steps", type=_positive, default=16, help="engine steps to capture")
    parser.add_argument("--out", metavar="DIR", required=True, help="where the files go")
    parser.add_argument("--num-prompts", type=_positive, default=4, help="prompts per wave")
    parser.add_argument("--prompt-len", type=_positive, default=32, help="tokens per prompt")
    parser.add_argument("--max-tokens", type=_positive, default=16, help="new tokens per prompt")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | hpu (no --config)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument(
        "--no-modules",
        action="store_true",
        help="skip the per-module ranges (their hooks add host time to eager steps)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def engine_config(args: argparse.Namespace):
    """The EngineConfig to profile: the config file's model, or a model folder with limits
    that fit the workload. Raises ValueError (bad arguments, tp_size > 1)."""
    from engine import EngineConfig, resolve_device_name

    if args.config is None:
        if args.model is None or not Path(args.model).is_dir():
            raise ValueError(
                f"--model {args.model!r} is not a model folder; give a model folder, or "
                "--config FILE with --model NAME"
            )
        per_request = args.prompt_len + args.max_tokens
        return EngineConfig(
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            max_num_seqs=args.num_prompts,
            max_model_len=per_request + 16,
            max_num_batched_tokens=max(args.num_prompts * args.prompt_len, 64),
        )
    from deployments.config import load_config
    from deployments.engine_config import engine_config_for

    served = load_config(args.config)
    if args.model is None:
        if len(served.models) != 1:
            names = ", ".join(m.name for m in served.models)
            raise ValueError(f"--model is needed: {args.config} serves several ({names})")
        model = served.models[0]
    else:
        try:
            model = served.model(args.model)
        except KeyError as exc:
            raise ValueError(f"--model: {exc.args[0]}") from None
    if model.tp_size != 1:
        raise ValueError(
            f"model {model.name!r} has tp_size {model.tp_size}: profiling covers tp_size 1 "
            "only for now (set tp_size: 1 for this model to profile one rank)"
        )
    return engine_config_for(model, resolve_device_name(model.device))


def run(args: argparse.Namespace) -> int:
    from engine import Engine
    from engine.profiling.report import format_report
    from engine.profiling.workload import REPORT_FILE, TRACE_FILE, Workload, profile_engine

    try:
        config = engine_config(args)
        engine = Engine(config)
    except (ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    workload = Workload(args.num_prompts, args.prompt_len, args.max_tokens)
    try:
        report = profile_engine(engine, args.steps, args.out, workload, modules=not args.no_modules)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.shutdown()
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        out = Path(args.out)
        print(f"\nwrote {out / TRACE_FILE} (open in ui.perfetto.dev) and {out / REPORT_FILE}")
    return 0
