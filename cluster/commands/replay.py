"""`gaudi-serve replay`: drive a running server with a trace, open loop, and write what it
measured as `gaudi-serve simulate` writes what it simulated (autoscale/sim/replay.py):

    gaudi-serve replay --trace t.jsonl --url http://127.0.0.1:8000 --model NAME --out DIR \\
        [--vocab-size N] [--slo-ttft 2 --slo-tpot 0.1] [--timeout 600] [--sample-interval 1]

DIR gets summary.json (autoscale/sim/summary.py, plus a "replay" entry: errors by kind,
requests not sent, whether it was interrupted, where the fleet samples came from),
records.jsonl, samples.jsonl and the plots. The vocabulary size bounds the prompt token
ids; the server's /v1/models gives it where it reports one, else --vocab-size is needed.
Ctrl-C (or SIGTERM) stops sending, cancels the requests in flight and still writes what
was measured. Exit code 0 when done (interrupted too), 2 for bad arguments, a bad trace or
a server that does not serve --model, 1 when the server cannot be reached or a warm-up
request fails, 130 for Ctrl-C before the replay began (nothing written).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from cluster.commands.arg_types import non_negative_float, non_negative_int, positive_float

PROG = "gaudi-serve replay"
CONNECT_TIMEOUT_S = 10.0


def _vocab_size(text: str) -> int:
    from autoscale.sim.trace import FIRST_TOKEN_ID

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= FIRST_TOKEN_ID:
        raise argparse.ArgumentTypeError(f"expected an integer > {FIRST_TOKEN_ID}, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from autoscale.slo_config import SloPolicyConfig

    parser.add_argument("--trace", metavar="FILE", required=True, help="the trace (JSONL)")
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", metavar="NAME", required=True, help="the served model")
    parser.add_argument("--out", metavar="DIR", required=True, help="where the files go")
    parser.add_argument(
        "--vocab-size",
        type=_vocab_size,
        default=None,
        help="the model's vocabulary size (default: from the server's /v1/models)",
    )
    parser.add_argument(
        "--slo-ttft",
        type=positive_float,
        default=SloPolicyConfig.ttft_s,
        help=f"TTFT SLO, s ({SloPolicyConfig.ttft_s})",
    )
    parser.add_argument(
        "--slo-tpot",
        type=positive_float,
        default=SloPolicyConfig.tpot_s,
        help=f"TPOT SLO, s ({SloPolicyConfig.tpot_s})",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=600.0, help="per request, from its send (600)"
    )
    parser.add_argument(
        "--sample-interval",
        type=non_negative_float,
        default=1.0,
        help="seconds between fleet samples from /health and /metrics; 0: none (1)",
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_int,
        default=1,
        help="small requests sent and awaited before the clock starts (1); a fresh "
        "server's first request pays one-off set-up a replay should not measure",
    )
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")


def run(args: argparse.Namespace) -> int:
    from autoscale.sim.trace import read_trace

    try:
        requests = read_trace(args.trace)
    except (ValueError, OSError) as exc:
        print(f"{PROG}: --trace: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_replay(args, requests))
    except _UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the replay began: nothing was measured
        print(f"{PROG}: interrupted before the replay began; nothing written", file=sys.stderr)
        return 130


class _UsageError(Exception):
    """Bad arguments for this server and trace (exit code 2)."""


async def _replay(args: argparse.Namespace, requests) -> int:
    import httpx

    from autoscale.sim.replay import ReplayConfig, model_card, replay, warm_up

    url = args.url.rstrip("/")
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    timeout = httpx.Timeout(args.timeout, connect=CONNECT_TIMEOUT_S)  # a read may wait long
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        try:
            card = await model_card(client, url, args.model, CONNECT_TIMEOUT_S)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        except httpx.HTTPError as exc:
            print(f"{PROG}: cannot reach {url}: {exc!r}", file=sys.stderr)
            return 1
        vocab_size = _check_fit(args, card, requests)
        config = ReplayConfig(url, args.model, vocab_size, args.timeout, args.sample_interval)
        try:
            await warm_up(client, config, args.warmup)
        except RuntimeError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        with _stop_on_signals(stop):
            print(f"replaying {len(requests)} requests against {url} ({args.model})")
            result = await replay(requests, config, client, stop)
    _write(args, result)
    return 0


def _check_fit(args: argparse.Namespace, card: dict, requests) -> int:
    """The vocabulary size to use; raises _UsageError for a trace the model cannot take."""
    vocab_size = args.vocab_size or card.get("vocab_size")
    if vocab_size is None:
        raise _UsageError(
            f"--vocab-size is needed: {args.url}/v1/models does not report {args.model!r}'s "
            "vocabulary size"
        )
    max_model_len = card.get("max_model_len")
    if max_model_len is not None:
        too_long = [
            i for i, r in enumerate(requests) if r.prompt_tokens + r.output_tokens > max_model_len
        ]
        if too_long:
            first = requests[too_long[0]]
            raise _UsageError(
                f"--trace: {len(too_long)} request(s) need more than {args.model!r}'s "
                f"max_model_len {max_model_len} (prompt + output tokens), the first on line "
                f"{too_long[0] + 1}: {first.prompt_tokens} + {first.output_tokens}"
            )
    return vocab_size


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event):
    """SIGINT and SIGTERM set `stop` while inside (where the loop can take signals)."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signals here: the run cannot be interrupted
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _write(args: argparse.Namespace, result) -> None:
    from autoscale.sim.plots import write_plots
    from autoscale.sim.summary import summarize, write_measurements, write_summary

    summary: dict = summarize(result.records, result.samples, args.slo_ttft, args.slo_tpot)
    summary["replay"] = {
        "errors": result.errors,
        "probe_errors": result.probe_errors,
        "warmup_requests": args.warmup,
        "num_not_sent": result.num_not_sent,
        "is_interrupted": result.is_interrupted,
        "samples": (
            "none (--sample-interval 0)"
            if args.sample_interval == 0
            else f"/health and /metrics every {args.sample_interval:g} s; target_replicas = "
            "serving + starting (the server does not expose the autoscaler's target)"
        ),
    }
    out = Path(args.out)
    paths = [write_summary(out, summary), *write_measurements(out, result.records, result.samples)]
    if not args.no_plots:
        try:
            paths += write_plots(out, result.records, result.samples, args.slo_ttft, args.slo_tpot)
        except ImportError as exc:
            print(f"{PROG}: no plots: {exc}", file=sys.stderr)
    keys = ("requests", "completed", "rejected", "lost", "ttft_p50_s", "tpot_p50_s")
    print(json.dumps({k: summary[k] for k in keys} | {"errors": result.errors}))
    if result.is_interrupted:
        print(f"interrupted: {result.num_not_sent} requests not sent")
    print("wrote " + ", ".join(str(p) for p in paths))
