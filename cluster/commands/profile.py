"""`gaudi-serve profile`: capture N engine steps of one model under torch.profiler on a
synthetic workload and print where each step's time went (engine.profiling). At tp_size 1
it writes DIR/trace.json (Chrome/Perfetto) and DIR/report.json for the engine's whole
steps; at tp_size N every rank (a Ray actor, sharding.worker) profiles its part of the
same steps and writes DIR/trace.rank<r>.json and DIR/report.rank<r>.json. Offline; a
running server is profiled through /debug/profile (deployments.debug_profile).
Exit code 0 on success, 2 for bad arguments or a model that cannot be loaded."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.commands.arg_types import positive_int

PROG = "gaudi-serve profile"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None, help="serving config (YAML)")
    parser.add_argument(
        "--model",
        metavar="NAME|PATH",
        default=None,
        help="a model of --config (default: its only one), or a model folder without --config",
    )
    parser.add_argument("--steps", type=positive_int, default=16, help="engine steps to capture")
    parser.add_argument("--out", metavar="DIR", required=True, help="where the files go")
    parser.add_argument("--num-prompts", type=positive_int, default=4, help="prompts per wave")
    parser.add_argument("--prompt-len", type=positive_int, default=32, help="tokens per prompt")
    parser.add_argument("--max-tokens", type=positive_int, default=16, help="new tokens per prompt")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | hpu (no --config)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument(
        "--tp-size",
        type=positive_int,
        default=None,
        help="tensor-parallel ranks, one trace each (default: the config's, else 1)",
    )
    parser.add_argument(
        "--no-modules",
        action="store_true",
        help="skip the per-module ranges (their hooks add host time to eager steps)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def engine_config(args: argparse.Namespace):
    """The EngineConfig to profile: the config file's model, or a model folder with limits
    that fit the workload; --tp-size overrides the tp_size. Raises ValueError."""
    import dataclasses

    config = _engine_config(args)
    if args.tp_size is not None:
        config = dataclasses.replace(config, tp_size=args.tp_size)
    return config


def _engine_config(args: argparse.Namespace):
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

    model = load_config(args.config).chosen_model(args.model, args.config)
    return engine_config_for(model, resolve_device_name(model.device))


def run(args: argparse.Namespace) -> int:
    from engine import Engine
    from engine.profiling.workload import Workload, profile_engine, profile_ranks
    from sharding.factory import create_executor

    try:
        config = engine_config(args)
        engine = Engine(config, executor_factory=create_executor)
    except (ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    workload = Workload(args.num_prompts, args.prompt_len, args.max_tokens)
    modules = not args.no_modules
    try:
        if config.tp_size == 1:
            reports = [profile_engine(engine, args.steps, args.out, workload, modules)]
        else:
            reports = profile_ranks(engine, args.steps, args.out, workload, modules)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.shutdown()
    _print(reports, args)
    return 0


def _print(reports: list[dict], args: argparse.Namespace) -> None:
    from engine.profiling.report import format_report
    from engine.profiling.session import RANK_REPORT_FILE
    from engine.profiling.workload import REPORT_FILE

    if args.json:
        import json

        body = reports[0] if len(reports) == 1 else {"tp_size": len(reports), "ranks": reports}
        print(json.dumps(body, indent=2))
        return
    out = Path(args.out)
    for report in reports:
        if len(reports) > 1:
            print(f"\nTP rank {report['tp_rank']} of {report['tp_size']}:")
        print(format_report(report))
    traces = ", ".join(str(out / r["trace"]) for r in reports)
    report_file = REPORT_FILE if len(reports) == 1 else RANK_REPORT_FILE.format(tp_rank="<r>")
    print(f"\nwrote {traces} (open in ui.perfetto.dev) and {out / report_file}")
