"""`gaudi-serve simulate`: a fleet of one config's model over a trace, in virtual time.

    gaudi-serve simulate --config serve.yaml --trace trace.jsonl --card gaudi3 --out runs/a
    gaudi-serve simulate --config serve.yaml --trace trace.jsonl --calibration calib.json \\
        --router round_robin --out runs/b

Writes DIR/summary.json (autoscale/sim/summary.py), DIR/records.jsonl and
DIR/samples.jsonl (every request and fleet sample) and the PNG plots
(autoscale/sim/plots.py; skipped with a note when matplotlib is not installed). The step
times come from a calibration file (`gaudi-serve calibrate`) or the analytic model of a
card (which needs the model's config.json: set the model's `path`). Exit codes: 0 done,
2 bad input (config, trace, calibration, card, router).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run"]

PROG = "gaudi-serve simulate"
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from autoscale.router_choice import REQUEST_ROUTERS

    parser.add_argument("--config", metavar="FILE", required=True, help="serving config (YAML)")
    parser.add_argument("--trace", metavar="FILE", required=True, help="request trace (JSONL)")
    cost = parser.add_mutually_exclusive_group(required=True)
    cost.add_argument("--calibration", metavar="FILE", help="calib.json (gaudi-serve calibrate)")
    cost.add_argument("--card", help="analytic step times for a card: gaudi2|gaudi3|h100|h200")
    parser.add_argument(
        "--router",
        choices=REQUEST_ROUTERS,
        default=None,
        help="request router (default: the config's serve.request_router)",
    )
    parser.add_argument("--model", metavar="NAME", help="a model of --config (default: the first)")
    parser.add_argument("--out", metavar="DIR", required=True, help="where the files go")
    parser.add_argument("--seed", type=int, default=0, help="the router's random draws")
    parser.add_argument(
        "--startup-s",
        type=float,
        default=None,
        help="a new replica's load + warm-up, seconds (default: autoscaling.default_startup_s "
        "or 120)",
    )
    parser.add_argument(
        "--publish-delay-s",
        type=float,
        default=0.0,
        help="seconds before the router sees a replica's step (default 0: per-step stream)",
    )
    parser.add_argument(
        "--request-overhead-s",
        type=float,
        default=0.0,
        help="seconds serving adds to each request outside the engine (proxy, ingress, "
        "routing, the way back), added to its TTFT and end (default 0: the engine alone)",
    )


def run(args: argparse.Namespace) -> int:
    from autoscale.sim.simulate import model_json, sim_engine_config, simulate
    from autoscale.sim.summary import summarize, write_measurements, write_summary
    from autoscale.sim.trace import TraceError, read_trace
    from deployments.config import ConfigError, load_config

    try:
        config = load_config(args.config, check_paths=False)
        model = config.model(args.model) if args.model else config.models[0]
        trace = read_trace(args.trace)
        cost = _step_cost(args, model, sim_engine_config(model, _max_len(model_json(model))))
    except (ConfigError, TraceError, KeyError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    start = time.perf_counter()
    try:
        result = simulate(
            model,
            trace,
            cost,
            router=args.router,
            seed=args.seed,
            startup_s=args.startup_s,
            publish_delay_s=args.publish_delay_s,
            request_overhead_s=args.request_overhead_s,
        )
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    wall_s = time.perf_counter() - start
    slo = model.serve.slo
    summary = summarize(result.records, result.samples, slo.ttft_s, slo.tpot_s, result.duration_s)
    summary["simulator"] = {**result.stats, "wall_s": wall_s}
    out = Path(args.out)
    paths = [write_summary(out, summary), *write_measurements(out, result.records, result.samples)]
    try:
        from autoscale.sim.plots import write_plots

        paths += write_plots(out, result.records, result.samples, slo.ttft_s, slo.tpot_s)
    except ImportError as exc:
        print(f"{PROG}: no plots: {exc}", file=sys.stderr)
    speed = result.duration_s / wall_s if wall_s > 0 else float("inf")
    lost = result.stats["num_lost_in_drain"]
    print(
        f"{summary['completed']}/{summary['requests']} requests completed, "
        f"{summary['rejected']} rejected" + (f", {lost} lost in drain" if lost else "") + "; "
        f"TTFT p50 {_s(summary['ttft_p50_s'])}, "
        f"p95 {_s(summary['ttft_p95_s'])}; TPOT p50 {_s(summary['tpot_p50_s'])}; "
        f"SLO attainment {_pct(summary['slo_attainment'])}; "
        f"{result.stats['replica_seconds']:.0f} replica-seconds, "
        f"{result.stats['num_scale_events']} scale events"
    )
    print(f"simulated {result.duration_s:.0f} s in {wall_s:.1f} s ({speed:.0f}x real time)")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _max_len(info: dict) -> int | None:
    return info.get("max_position_embeddings")


def _step_cost(args: argparse.Namespace, model, engine):
    """The StepCost of --calibration or --card; ValueError names what is wrong."""
    from autoscale.sim.step_models import analytic_cost_for, check_calibration, load_calibration

    if args.calibration is not None:
        cost = load_calibration(args.calibration)
        check_calibration(cost, block_size=engine.block_size)
        return cost
    config_json = None if model.path is None else Path(model.path) / "config.json"
    if config_json is None or not config_json.is_file():
        raise ValueError(
            f"--card needs model {model.name!r}'s config.json: set its path in --config "
            "to a folder holding it (or use --calibration)"
        )
    dtype = "bfloat16" if model.dtype == "auto" else model.dtype
    return analytic_cost_for(
        config_json, args.card, model.tp_size, dtype, block_size=engine.block_size
    )


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
