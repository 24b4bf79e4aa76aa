"""`gaudi-serve trace`: write, import and describe request traces (JSONL, one request a
line: autoscale/sim/trace.py) for `gaudi-serve simulate` and `gaudi-serve replay`.

    gaudi-serve trace synth --kind poisson --rate 4 --duration 600 --seed 1 --out t.jsonl \\
        --prompt-tokens lognormal:512:0.5:16:2048 --output-tokens uniform:32:256 \\
        --prefix-groups 8:256:0.5:zipf
    gaudi-serve trace synth --kind bursty --cv 3 ...      Gamma inter-arrivals
    gaudi-serve trace synth --kind diurnal --period 3600 --amplitude 0.8 ...
    gaudi-serve trace import --format azure|burstgpt|mooncake --in SRC --out t.jsonl \\
        [--time-scale 0.5] [--max-requests 1000] [--start S] [--end S]
    gaudi-serve trace stats t.jsonl [--json]

Exit code 0 on success, 2 for bad arguments or a bad input file (the message names the
flag, or the file, line and column).
"""

from __future__ import annotations

import argparse
import json
import sys

from cluster.commands.arg_types import non_negative_float, positive_float, positive_int

PROG = "gaudi-serve trace"


def _lengths(name: str):
    def parse(text: str):
        from autoscale.sim.synth import parse_lengths

        try:
            return parse_lengths(text, name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _prefix_groups(text: str):
    from autoscale.sim.synth import parse_prefix_groups

    try:
        return parse_prefix_groups(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from autoscale.sim.importers import FORMATS
    from autoscale.sim.synth import ARRIVAL_KINDS

    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    synth = sub.add_parser("synth", help="write a synthetic trace")
    synth.add_argument("--kind", required=True, choices=ARRIVAL_KINDS, help="arrival process")
    synth.add_argument("--rate", type=positive_float, required=True, help="requests/s (mean)")
    synth.add_argument("--duration", type=positive_float, required=True, help="seconds")
    synth.add_argument("--seed", type=int, required=True, help="the same seed, the same trace")
    synth.add_argument("--out", metavar="FILE", required=True, help="the trace (JSONL)")
    synth.add_argument(
        "--cv", type=positive_float, default=2.0, help="bursty: inter-arrival CV (default 2)"
    )
    synth.add_argument(
        "--period", type=positive_float, default=3600.0, help="diurnal: period, s (3600)"
    )
    synth.add_argument(
        "--amplitude",
        type=non_negative_float,
        default=0.5,
        help="diurnal: rate swing, 0..1 of the mean rate (0.5)",
    )
    lengths_help = "N | uniform:LOW:HIGH | lognormal:MEAN:CV[:MIN:MAX]"
    synth.add_argument(
        "--prompt-tokens",
        metavar="LENGTHS",
        type=_lengths("--prompt-tokens"),
        default="512",
        help=f"{lengths_help} (512); in a prefix group, the tokens after the prefix",
    )
    synth.add_argument(
        "--output-tokens",
        metavar="LENGTHS",
        type=_lengths("--output-tokens"),
        default="128",
        help=f"{lengths_help} (128)",
    )
    synth.add_argument(
        "--prefix-groups",
        type=_prefix_groups,
        default=None,
        metavar="GROUPS:TOKENS[:FRACTION[:zipf|uniform]]",
        help="shared-prefix groups, e.g. 8:256:0.5:zipf (default: none)",
    )

    imp = sub.add_parser("import", help="convert a published trace to JSONL")
    imp.add_argument("--format", required=True, choices=FORMATS, help="the source's format")
    imp.add_argument("--in", dest="source", metavar="FILE", required=True, help="source trace")
    imp.add_argument("--out", metavar="FILE", required=True, help="the trace (JSONL)")
    imp.add_argument(
        "--time-scale",
        type=positive_float,
        default=1.0,
        help="multiply arrival times: 0.5 replays twice as fast (1)",
    )
    imp.add_argument("--max-requests", type=positive_int, default=None, help="keep the first N")
    imp.add_argument(
        "--start", type=non_negative_float, default=None, help="window start, s from 1st row"
    )
    imp.add_argument(
        "--end", type=positive_float, default=None, help="window end, s from the first row"
    )

    stats = sub.add_parser("stats", help="count, span, rate, token lengths, prefix share")
    stats.add_argument("file", metavar="FILE", help="a trace (JSONL)")
    stats.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    try:
        return {"synth": _synth, "import": _import, "stats": _stats}[args.action](args)
    except (ValueError, OSError) as exc:
        print(f"{PROG} {args.action}: {exc}", file=sys.stderr)
        return 2


def _synth(args: argparse.Namespace) -> int:
    from autoscale.sim.synth import SynthSpec, synthesize
    from autoscale.sim.trace import write_trace

    if args.amplitude > 1:
        raise ValueError(f"--amplitude must be in [0, 1], got {args.amplitude}")
    spec = SynthSpec(
        kind=args.kind,
        rate=args.rate,
        duration_s=args.duration,
        seed=args.seed,
        cv=args.cv,
        period_s=args.period,
        amplitude=args.amplitude,
        prompt=args.prompt_tokens,
        output=args.output_tokens,
        prefix=args.prefix_groups,
    )
    count = write_trace(args.out, synthesize(spec))
    print(f"wrote {count} requests to {args.out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from autoscale.sim.importers import ImportOptions, import_trace
    from autoscale.sim.trace import write_trace

    if args.start is not None and args.end is not None and args.end <= args.start:
        raise ValueError(f"--end ({args.end}) must be after --start ({args.start})")
    options = ImportOptions(args.time_scale, args.max_requests, args.start, args.end)
    result = import_trace(args.format, args.source, options)
    count = write_trace(args.out, result.requests)
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(result.skipped.items()))
    print(f"read {result.num_rows} rows; wrote {count} requests to {args.out}")
    if skipped:
        print(f"skipped: {skipped}")
    for key, value in sorted(result.notes.items()):
        print(f"{key}: {value:g}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from autoscale.sim.trace import read_trace
    from autoscale.sim.trace_stats import format_stats, trace_stats

    stats = trace_stats(read_trace(args.file))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0
