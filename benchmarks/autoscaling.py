"""Autoscaling policies side by side under a step-shaped load: `slo` vs Ray Serve's default.

    .venv/bin/python -m benchmarks.autoscaling                      # both policies, defaults
    .venv/bin/python -m benchmarks.autoscaling --policies slo --high-rate 10
    .venv/bin/python -m benchmarks.autoscaling --low-s 30 --high-s 60 --tail-s 60 --out /tmp/a

For each policy of `serve.autoscaling.policy` (slo, ongoing_requests; `--policies` picks)
`gaudi-serve up` starts as a subprocess (benchmarks.routing.Server: its own embedded Ray,
stopped by SIGINT; Ctrl-C or SIGTERM here stops it too) serving the bundled `pycoder` on
CPU, fp32, one torch thread per replica (OMP_NUM_THREADS=1), autoscaling between
`--min-replicas` (1) and `--max-replicas` (2), with 5 logical CPUs declared (each replica
asks for one) so a second replica can start. The slo policy runs with `serve.slo`
(`--ttft-s` 1.0, `--tpot-s` 0.2) and short delays so that it reacts within the run
(downscale_delay_s 20, demand_window_s 60, forecast_window_s 30, default_startup_s 30,
settle_s 10); ongoing_requests (Ray's policy: replicas = ongoing requests /
target_ongoing_requests) with target_ongoing_requests 4, upscale_delay_s 5 and
downscale_delay_s 20.

The load is open loop (Poisson arrivals, seeded: the same requests for both policies) in
three phases: `--low-rate` per second for `--low-s` (60 s), `--high-rate` for `--high-s`
(120 s: more than one replica serves within the SLO), `--low-rate` again for `--tail-s`
(90 s: room for a scale-down). Every request is a streamed /v1/completions with a
token-id prompt of `--prompt-min`..`--prompt-max` tokens, greedy, `--max-tokens` (32)
tokens with EOS ignored (benchmarks.routing_workloads.send).

Measured per policy:
  * every second, the replicas in each state from /health (`healthy` counts as running);
  * per request: its send time (scheduled arrival), TTFT (send to first token, at the
    client), TPOT ((end - first token) / (tokens - 1)), status (ok, or the error);
  * SLO attainment: the share of requests sent with TTFT <= ttft_s and TPOT <= tpot_s (a
    failed request misses);
  * TTFT p50 / p99 over the answered requests;
  * replica-seconds: the integral of running replicas from the first send to the last
    answer;
  * rejected requests: 429/503 with Retry-After (admission control with
    `--max-queue-wait-s`, which also switches both policies to the kv_aware router);
  * failed requests: other non-200 answers or broken streams (the goal: none lost);
  * the Serve controller's scaling log lines (the slo policy's `slo autoscaling ...:
    a -> b replicas (reason) ...`, Serve's own `Upscaling`/`Downscaling`/`Adding`/
    `Removing` lines).
A markdown table goes to stdout, everything to `--out`/autoscaling.json, and a figure
(replicas over time with the offered rate as a step line, TTFT over time as a scatter,
both policies) to `--plot` (benchmarks/autoscaling.png).

Goal ([autoscale], issue 13): slo's SLO attainment >= ongoing_requests' with <= 0.8x its
replica-seconds, and zero accepted requests lost; checked and printed under the table.

Machine caveat: the reference machine has 2 CPU cores shared by everything (both
replicas, Ray, the HTTP proxy, the ingress and this client). A second replica adds at
most one core and competes with the proxy and client for it, so the capacity a scale-up
buys is smaller and noisier than on real hardware, and absolute latencies vary from run
to run: compare the policies within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import re
import sys
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.routing import Server, Stopped, _pct, prepare, server_config
from benchmarks.routing_workloads import MODEL_NAME, body, poisson_arrivals, send
from benchmarks.workload import code_prompts

POLICIES = ("slo", "ongoing_requests")
SCALING_LINE = re.compile(r"slo autoscaling|Upscaling|Downscaling|Adding \d+ replica|Removing \d")


@dataclass
class Sent:
    """One request of the step load and what the client saw of it."""

    send_s: float  # scheduled send, seconds after the load starts
    prompt_tokens: int
    ttft_s: float | None = None
    tpot_s: float | None = None
    end_s: float | None = None
    num_tokens: int = 0
    status: str = "not sent"


# -- the load ----------------------------------------------------------------------------
def phases(args: argparse.Namespace) -> list[tuple[float, float, float]]:
    """(start s, end s, rate per s) of the three phases."""
    a, b = args.low_s, args.low_s + args.high_s
    return [(0.0, a, args.low_rate), (a, b, args.high_rate), (b, b + args.tail_s, args.low_rate)]


def step_load(args: argparse.Namespace, tokenizer) -> list[tuple[float, list[int]]]:
    """(send s, prompt) for every request, seeded."""
    rng = random.Random(args.seed)
    times = []
    for start, end, rate in phases(args):
        n = max(1, math.ceil(rate * (end - start) * 3))
        times += [start + t for t in poisson_arrivals(n, rate, rng) if start + t < end]
    prompts = code_prompts(tokenizer, len(times), args.prompt_min, args.prompt_max, args.seed)
    return list(zip(times, prompts, strict=True))


async def run_load(url: str, load, args: argparse.Namespace) -> tuple[list[Sent], list[dict]]:
    """Send the load open loop while sampling /health every second; returns the requests
    and the samples ({t, running, states})."""
    sent = [Sent(t, len(p)) for t, p in load]
    samples: list[dict] = []
    limits = httpx.Limits(max_connections=len(load) + 8, max_keepalive_connections=64)
    timeout = httpx.Timeout(args.request_timeout_s, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        begin = time.perf_counter()

        async def one(record: Sent, prompt: list[int]) -> None:
            await asyncio.sleep(max(0.0, begin + record.send_s - time.perf_counter()))
            start = begin + record.send_s
            record.status = "sent"
            try:
                answer = await send(client, url, body(prompt, args.max_tokens), start)
            except (httpx.HTTPError, RuntimeError) as exc:
                record.status = f"{type(exc).__name__}: {exc}"[:300]
                return
            end = time.perf_counter()
            record.ttft_s, record.num_tokens = answer.ttft_s, answer.num_tokens
            record.end_s = end - begin
            decode_s = end - start - answer.ttft_s
            record.tpot_s = decode_s / (answer.num_tokens - 1) if answer.num_tokens > 1 else 0.0
            record.status = "ok" if answer.num_tokens == args.max_tokens else "short"

        async def sampler() -> None:
            tick = 0
            while True:
                tick += 1
                t = time.perf_counter() - begin
                try:
                    health = (await client.get(f"{url}/health", timeout=5)).json()
                    states = list(((health.get("replicas") or {}).get(MODEL_NAME) or {}).values())
                except (httpx.HTTPError, ValueError):
                    states = None
                if states is not None:
                    running = sum(s == "healthy" for s in states)
                    samples.append({"t": round(t, 2), "running": running, "states": states})
                await asyncio.sleep(max(0.0, begin + tick - time.perf_counter()))

        sampling = asyncio.create_task(sampler())
        tasks = [asyncio.create_task(one(r, p)) for r, (_, p) in zip(sent, load, strict=True)]
        deadline = phases(args)[-1][1] + args.drain_timeout_s
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for record in sent:
            if record.status == "sent":
                record.status = "timed out (benchmark deadline)"
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
    return sent, samples


# -- the server --------------------------------------------------------------------------
def autoscaling_options(args: argparse.Namespace, policy: str) -> dict:
    common = {
        "min_replicas": args.min_replicas,
        "initial_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "policy": policy,
    }
    if policy == "slo":
        return common | {
            "downscale_delay_s": args.downscale_delay_s,
            "demand_window_s": 60.0,
            "forecast_window_s": 30.0,
            "default_startup_s": 30.0,
            "settle_s": 10.0,
        }
    return common | {
        "target_ongoing_requests": args.target_ongoing_requests,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": args.downscale_delay_s,
    }


class AutoscalingServer(Server):
    """benchmarks.routing.Server with an autoscaling config instead of fixed replicas;
    healthy once `--min-replicas` replicas are (args.replicas is min_replicas, so the
    routing server declares min_replicas + 4 logical CPUs)."""

    def __init__(self, args: argparse.Namespace, policy: str):
        super().__init__(args, policy)
        self.autoscaling_policy = policy

    def config(self, port: int) -> dict:
        args = self.args
        router = "kv_aware" if args.max_queue_wait_s is not None else "power_of_two"
        config = server_config(args, router, port)
        serve = config["models"][0]["serve"]
        if args.max_queue_wait_s is not None:  # admission control (kv_aware's predictions)
            serve["max_queue_wait_s"] = args.max_queue_wait_s
        del serve["num_replicas"]
        serve["autoscaling"] = autoscaling_options(args, self.autoscaling_policy)
        serve["slo"] = {"ttft_s": args.ttft_s, "tpot_s": args.tpot_s}
        serve["max_ongoing_requests"] = args.max_ongoing_requests
        return config

    def scaling_log(self) -> list[str]:
        """The Serve controller's scaling lines, from the embedded Ray's session logs."""
        session = None
        for process in list(self.started):
            try:
                cmdline = " ".join(process.cmdline())
            except Exception:
                continue
            found = re.search(r"--session[-_]dir=(\S+)", cmdline)
            if found:
                session = Path(found.group(1))
                break
        if session is None:
            return ["(no Ray session directory found)"]
        lines = []
        for path in sorted((session / "logs" / "serve").glob("controller_*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if SCALING_LINE.search(line):
                    lines.append(line.strip()[:400])
        return lines


async def warm_up(url: str, tokenizer, args: argparse.Namespace) -> None:
    """Four requests one after another (fails loudly: a server that cannot answer them
    has nothing to measure)."""
    prompts = code_prompts(tokenizer, 4, args.prompt_min, args.prompt_max, args.seed + 99)
    async with httpx.AsyncClient(timeout=120) as client:
        for prompt in prompts:
            await send(client, url, body(prompt, args.max_tokens), time.perf_counter())


def run_policy(args, policy: str, load, tokenizer) -> dict:
    server = AutoscalingServer(args, policy)
    print(f"{policy}: starting gaudi-serve up (log {server.log}) ...", flush=True)
    began = time.perf_counter()
    row: dict = {"policy": policy}
    try:
        server.start()
        row["startup_s"] = round(time.perf_counter() - began, 1)
        asyncio.run(warm_up(server.url, tokenizer, args))
        print(f"{policy}: serving after {row['startup_s']:.0f}s; step load ...", flush=True)
        sent, samples = asyncio.run(run_load(server.url, load, args))
        row |= summarize(args, sent, samples)
        row["scaling_log"] = server.scaling_log()
        print(f"{policy}: {json.dumps(brief(row))}", flush=True)
    except Exception as exc:
        print(f"{policy}: failed: {type(exc).__name__}: {exc}", flush=True)
        row["failed"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        print(f"{policy}: stopping ...", flush=True)
        for line in server.stop():
            print(f"  {line}", flush=True)
    return row


# -- measures ----------------------------------------------------------------------------
def replica_seconds(samples: list[dict], start: float, end: float) -> float:
    """Integral of running replicas over [start, end], each sample held until the next."""
    total = 0.0
    for i, s in enumerate(samples):
        t0 = max(s["t"], start)
        t1 = min(samples[i + 1]["t"] if i + 1 < len(samples) else end, end)
        if t1 > t0:
            total += s["running"] * (t1 - t0)
    return total


REJECTED = re.compile(r"HTTP (429|503)")  # refused with Retry-After: admission, cold start


def summarize(args, sent: list[Sent], samples: list[dict]) -> dict:
    ok = [r for r in sent if r.status == "ok"]
    met = [r for r in ok if r.ttft_s <= args.ttft_s and r.tpot_s <= args.tpot_s]
    ttfts = [r.ttft_s for r in ok]
    end = max((r.end_s for r in ok), default=phases(args)[-1][1])
    rejected = [r for r in sent if REJECTED.search(r.status)]
    failed = [r for r in sent if r.status != "ok" and r not in rejected]
    return {
        "requests": len(sent),
        "ok": len(ok),
        "num_rejected": len(rejected),
        "num_failed": len(failed),
        "failures": sorted({r.status for r in failed})[:10],
        "slo_attainment": round(len(met) / len(sent), 4) if sent else math.nan,
        "ttft_p50_s": round(_pct(ttfts, 50), 3),
        "ttft_p99_s": round(_pct(ttfts, 99), 3),
        "tpot_p50_s": round(_pct([r.tpot_s for r in ok], 50), 4),
        "tpot_p99_s": round(_pct([r.tpot_s for r in ok], 99), 4),
        "replica_seconds": round(replica_seconds(samples, 0.0, end), 1),
        "max_running": max((s["running"] for s in samples), default=0),
        "load_end_s": round(end, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "samples": samples,
        "per_request": [asdict(r) for r in sent],
    }


def brief(row: dict) -> dict:
    keys = ("requests", "num_rejected", "num_failed", "slo_attainment", "ttft_p50_s", "ttft_p99_s")
    return {k: row[k] for k in keys} | {"replica_seconds": row["replica_seconds"]}


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| policy | requests | rejected | failed | SLO attainment | TTFT p50 s | TTFT p99 s "
        "| TPOT p50 s | replica-seconds | max replicas | scaling lines |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['policy']} | failed: {r['failed'][:120]} ||||||||||")
            continue
        lines.append(
            f"| {r['policy']} | {r['requests']} | {r['num_rejected']} | {r['num_failed']} "
            f"| {100 * r['slo_attainment']:.1f}% | {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} "
            f"| {r['tpot_p50_s']:.3f} | {r['replica_seconds']:.0f} | {r['max_running']} "
            f"| {len(r['scaling_log'])} |"
        )
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    by = {r["policy"]: r for r in rows if "failed" not in r}
    ours, base = by.get("slo"), by.get("ongoing_requests")
    if ours is None or base is None:
        return ["- slo vs ongoing_requests: not measured"]
    attain = ours["slo_attainment"] >= base["slo_attainment"]
    ratio = ours["replica_seconds"] / base["replica_seconds"] if base["replica_seconds"] else 0
    lost = ours["num_failed"] + base["num_failed"]
    return [
        f"- SLO attainment >= ongoing_requests': {'met' if attain else 'MISSED'} "
        f"({100 * ours['slo_attainment']:.1f}% vs {100 * base['slo_attainment']:.1f}%)",
        f"- replica-seconds <= 0.8x ongoing_requests': {'met' if ratio <= 0.8 else 'MISSED'} "
        f"({ours['replica_seconds']:.0f} vs {base['replica_seconds']:.0f}, {ratio:.2f}x)",
        f"- zero requests lost: {'met' if lost == 0 else 'MISSED'} "
        f"(slo {ours['num_failed']}, ongoing_requests {base['num_failed']})",
    ]


def plot(rows: list[dict], args: argparse.Namespace, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "failed" not in r]
    if not done:
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colors = {"slo": "tab:blue", "ongoing_requests": "tab:orange"}
    for r in done:
        t = [s["t"] for s in r["samples"]]
        n = [s["running"] for s in r["samples"]]
        top.step(t, n, where="post", color=colors[r["policy"]], label=f"{r['policy']} replicas")
        ok = [q for q in r["per_request"] if q["status"] == "ok"]
        bottom.scatter(
            [q["send_s"] for q in ok],
            [q["ttft_s"] for q in ok],
            s=6,
            color=colors[r["policy"]],
            alpha=0.5,
            label=r["policy"],
        )
        bad = [q for q in r["per_request"] if q["status"] != "ok"]
        if bad:
            bottom.scatter(
                [q["send_s"] for q in bad],
                [args.ttft_s] * len(bad),
                marker="x",
                color=colors[r["policy"]],
                label=f"{r['policy']} failed",
            )
    top.set_ylabel("running replicas")
    top.set_ylim(0, args.max_replicas + 0.5)
    rate = top.twinx()
    edges = phases(args)
    xs = [p[0] for p in edges] + [edges[-1][1]]
    ys = [p[2] for p in edges] + [edges[-1][2]]
    rate.step(xs, ys, where="post", color="gray", linestyle="--", label="offered req/s")
    rate.set_ylabel("offered requests/s")
    rate.set_ylim(0, args.high_rate * 1.3)
    lines = top.get_legend_handles_labels()
    more = rate.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper right")
    bottom.axhline(args.ttft_s, color="black", linestyle=":", label=f"ttft_s {args.ttft_s:g}")
    bottom.set_yscale("log")
    bottom.set_ylabel("TTFT s (by send time)")
    bottom.set_xlabel("seconds since the load started")
    bottom.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="model folder (default: pycoder)")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--ttft-s", type=float, default=1.0)
    p.add_argument("--tpot-s", type=float, default=0.2)
    p.add_argument("--downscale-delay-s", type=float, default=20.0)
    p.add_argument("--target-ongoing-requests", type=float, default=4.0)
    p.add_argument("--low-rate", type=float, default=1.0, help="requests/s, low phases")
    p.add_argument("--high-rate", type=float, default=8.0, help="requests/s, the step")
    p.add_argument("--low-s", type=float, default=60.0)
    p.add_argument("--high-s", type=float, default=120.0)
    p.add_argument("--tail-s", type=float, default=90.0)
    p.add_argument("--prompt-min", type=int, default=256)
    p.add_argument("--prompt-max", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-ongoing-requests", type=int, default=64)
    p.add_argument(
        "--max-queue-wait-s",
        type=float,
        default=None,
        help="admission control for both policies (the kv_aware router; default: off, "
        "power_of_two)",
    )
    p.add_argument("--kv-cache-tokens", type=int, default=16384, help="per replica")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout-s", type=float, default=300.0)
    p.add_argument("--request-timeout-s", type=float, default=120.0)
    p.add_argument("--drain-timeout-s", type=float, default=60.0, help="after the last phase")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/autoscaling"))
    p.add_argument("--plot", type=Path, default=Path("benchmarks/autoscaling.png"))
    args = p.parse_args(argv)
    args.policies = [x for x in args.policies.split(",") if x]
    for x in args.policies:
        if x not in POLICIES:
            p.error(f"--policies: {x!r} is not one of {', '.join(POLICIES)}")
    if not 1 <= args.min_replicas <= args.max_replicas:
        p.error(
            f"need 1 <= --min-replicas <= --max-replicas, got {args.min_replicas}, "
            f"{args.max_replicas}"
        )
    # routing.Server / server_config read these:
    args.replicas = args.min_replicas
    args.engine_warmup = False
    return args


def setup_line(args: argparse.Namespace, num_requests: int) -> str:
    return (
        f"{MODEL_NAME} on CPU (1 thread/replica), autoscaling {args.min_replicas}-"
        f"{args.max_replicas}; SLO ttft {args.ttft_s:g}s tpot {args.tpot_s:g}s; {num_requests} "
        f"requests: {args.low_rate:g}/s {args.low_s:g}s, {args.high_rate:g}/s {args.high_s:g}s, "
        f"{args.low_rate:g}/s {args.tail_s:g}s; prompts {args.prompt_min}-{args.prompt_max} "
        f"tokens, {args.max_tokens} out"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer = prepare(args)
    load = step_load(args, tokenizer)
    title = setup_line(args, len(load))
    print(title, flush=True)
    began = time.perf_counter()
    rows: list[dict] = []
    interrupted = False
    try:
        for policy in args.policies:
            rows.append(run_policy(args, policy, load, tokenizer))
    except (KeyboardInterrupt, Stopped):
        print("interrupted: reporting what finished (no figure)", flush=True)
        interrupted = True
    wall_s = time.perf_counter() - began
    table = markdown_table(rows)
    checks = goals(rows)
    print(f"\n{title}; wall {wall_s / 60:.1f} min\n\n{table}\n\nGoals (slo):")
    print("\n".join(checks))
    for r in rows:
        print(f"\n{r['policy']} scaling log:")
        print("\n".join(f"  {line}" for line in r.get("scaling_log", [])) or "  (none)")
    command = [Path(sys.executable).name, "-m", "benchmarks.autoscaling", *sys.argv[1:]]
    result = {
        "command": " ".join(command),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": round(wall_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
        "goals": checks,
    }
    (args.out / "autoscaling.json").write_text(json.dumps(result, indent=1))
    (args.out / "autoscaling.md").write_text(table + "\n\n" + "\n".join(checks) + "\n")
    print(f"\nwrote {args.out / 'autoscaling.json'} and {args.out / 'autoscaling.md'}")
    if interrupted:
        return 130
    plot(rows, args, args.plot, title)
    print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
