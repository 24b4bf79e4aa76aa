"""`gaudi-serve calibrate`: measure a served model's prefill and decode step times on the
local device through the real engine and write calib.json, the calibrated step-time model
of `gaudi-serve simulate --calibration` (autoscale.sim.calibrate, SIMULATOR.md).

    gaudi-serve calibrate --config serve.yaml [--model NAME] --out calib.json

Without --config: the default config (`gaudi-serve up` without one). The engine is built
and warmed as a replica of that model (device, dtype, tp_size, buckets, graphs). By default
each bucket dimension is thinned to 4 values (--max-values-per-dim N, or --full-grid for
every warmed bucket) and each shape is timed 3 times after a dropped first run (--repeats).
Exit code 0 on success, 2 for bad arguments or a model that cannot be built.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from cluster.commands.arg_types import non_negative_int, positive_int

PROG = "gaudi-serve calibrate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", default=None, help="serving config (default: the default)"
    )
    parser.add_argument(
        "--model", metavar="NAME", default=None, help="a model of --config (default: its only one)"
    )
    parser.add_argument("--out", metavar="FILE", required=True, help="where calib.json goes")
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument(
        "--max-values-per-dim",
        type=positive_int,
        default=4,
        help="bucket values measured per dimension (default 4: smallest, largest, between)",
    )
    grid.add_argument("--full-grid", action="store_true", help="measure every warmed bucket")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="timed runs per shape after the dropped first",
    )
    parser.add_argument(
        "--check-tokens",
        type=non_negative_int,
        default=8,
        help="max_tokens of the engine-check requests that fit the host overhead (0: skip)",
    )


def engine_config(args: argparse.Namespace):
    """The EngineConfig of the chosen model of --config (or of the default config).
    Raises ValueError naming the problem."""
    from deployments.config import ServeConfig, load_config
    from deployments.engine_config import engine_config_for
    from engine import resolve_device_name

    served = load_config(args.config) if args.config else ServeConfig.default()
    model = served.chosen_model(args.model, args.config or "the default config")
    return engine_config_for(model, resolve_device_name(model.device))


def _build_engine(config):
    """The engine of `config`, with the executor a serving replica gets (tp_size > 1:
    Ray rank actors, as deployments.server)."""
    from engine import Engine
    from sharding.factory import create_executor

    return Engine(config, create_executor)


def run(args: argparse.Namespace) -> int:
    from autoscale.sim.calibrate import CalibrationGrid, calibrate_engine
    from autoscale.sim.step_models import save_calibration
    from deployments.config import ConfigError

    try:
        grid = CalibrationGrid(
            max_values_per_dim=None if args.full_grid else args.max_values_per_dim,
            repeats=args.repeats,
            check_tokens=args.check_tokens,
        )
        config = engine_config(args)
        start = time.perf_counter()
        engine = _build_engine(config)
    except (ValueError, OSError, ConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(
        f"{PROG}: {engine.model_path.name} built and warmed in {time.perf_counter() - start:.1f} s"
    )
    try:
        cost, extra = calibrate_engine(engine, grid, progress=lambda line: print(f"{PROG}: {line}"))
    finally:
        engine.shutdown()
    save_calibration(cost, args.out, extra)
    print(format_summary(cost, extra))
    for warning in noise_warnings(cost, extra, os.getloadavg()[0], os.cpu_count() or 1):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    print(f"{PROG}: wrote {args.out}")
    return 0


NOISY_SPREAD = 2.0  # a shape whose slowest repeat took over this x its fastest was disturbed
NOISY_SHARE = 0.25  # warn when over this share of the shapes were
CHECK_RANGE = (0.67, 1.5)  # the engine check's total predicted/measured outside: warn


def noise_warnings(cost, extra: dict, load_average: float, num_cpus: int) -> list[str]:
    """Why this calibration may not be the device's own timing: repeats far apart (another
    process took the host), the engine check off, or a load average over the host's CPUs
    (measured while the calibration itself ran: it counts itself)."""
    warnings = []
    spreads = [m.max_s / m.min_s for m in cost.raw if m.min_s and m.max_s and m.num_repeats > 1]
    disturbed = sum(spread > NOISY_SPREAD for spread in spreads)
    if spreads and disturbed > NOISY_SHARE * len(spreads):
        warnings.append(
            f"{disturbed} of {len(spreads)} shapes had repeats over {NOISY_SPREAD:g}x apart: "
            "the host was busy; calibrate on an idle machine (timings use the fastest repeat)"
        )
    for kind, check in extra.get("engine_check", {}).items():
        ratio = check["total_ratio"]
        if not CHECK_RANGE[0] <= ratio <= CHECK_RANGE[1]:
            warnings.append(
                f"the engine check's {kind} steps took {1 / ratio:.2f}x what the model predicts "
                f"(outside {CHECK_RANGE[0]:g}..{CHECK_RANGE[1]:g}): noisy timings or a model "
                "that does not fit this device"
            )
    if load_average > num_cpus + 1:
        warnings.append(
            f"load average {load_average:.1f} on {num_cpus} CPUs: other processes competed"
        )
    return warnings


def format_summary(cost, extra: dict) -> str:
    """A few figures of the calibration: decode step at batch 1 / 8 / largest (shortest
    and longest context), prefill tokens/s, and the engine check."""
    from autoscale.sim.step_cost import DECODE, PREFILL, StepWork
    from engine.shapes import StepShape

    meta = cost.metadata
    batches = meta["buckets"]["decode_batch_sizes"]
    blocks = meta["buckets"]["decode_num_blocks"]
    lines = [f"{meta['model']} on {meta['device']} ({meta['dtype']}, tp {meta['tp_size']}):"]
    for batch in sorted({1, min(8, batches[-1]), batches[-1]}):
        for num_blocks in (blocks[0], blocks[-1]):
            shape = StepShape(DECODE, batch, 1, num_blocks)
            ctx = num_blocks * meta["block_size"]
            step_s = cost.step_s(StepWork(DECODE, batch, batch, batch * ctx, shape))
            lines.append(
                f"  decode batch {batch:>3} at {ctx:>5} context: {step_s * 1e3:8.2f} ms/step "
                f"({batch / step_s:,.0f} tok/s)"
            )
    fresh = [
        s
        for s in cost.table
        if s.kind == PREFILL
        and s.num_blocks * meta["block_size"] < s.query_len + meta["block_size"]
    ]
    prefill = max(fresh or [s for s in cost.table if s.kind == PREFILL], key=lambda s: s.num_tokens)
    work = StepWork(PREFILL, prefill.batch_size, prefill.num_tokens, 0, prefill)
    step_s = cost.step_s(work)
    lines.append(
        f"  prefill {prefill.batch_size} x {prefill.query_len} tokens: {step_s * 1e3:.1f} ms "
        f"({prefill.num_tokens / step_s:,.0f} tok/s)"
    )
    for kind, check in extra.get("engine_check", {}).items():
        lines.append(
            f"  engine check, {kind}: {check['num_steps']} steps, median error "
            f"{check['median_abs_rel_error']:.1%}, total predicted/measured "
            f"{check['total_ratio']:.2f}"
        )
    return "\n".join(lines)
