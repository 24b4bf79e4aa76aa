"""Request routing policies side by side: prefix-sharing, unique and multi-turn workloads.

    .venv/bin/python -m benchmarks.routing                          # every policy, defaults
    .venv/bin/python -m benchmarks.routing --policies kv_aware,power_of_two --workloads a
    .venv/bin/python -m benchmarks.routing --replicas 3 --rate-a 1.5 --out /tmp/routing

For each policy of `serve.request_router` (kv_aware, power_of_two, prefix_affinity,
round_robin; `--policies` picks) `gaudi-serve up` starts as a subprocess (its own embedded
Ray, stopped by SIGINT, which shuts Serve and Ray down; Ctrl-C or SIGTERM here stops it
too) serving the bundled `pycoder` (5.5M parameters, 2048 positions, block size 16) with
`--replicas` replicas on CPU, fp32, one torch thread each (OMP_NUM_THREADS=1), max_model_len
2048 and a KV cache of `engine.kv_cache_tokens` per replica (default: derived from workload
(a) and printed: room for ceil(groups / replicas) + 0.5 of its longest prefix, so no replica
holds every shared prefix while the replicas together hold them all). After a warm-up that
gives every replica step-time data (kv_aware falls back to power-of-two until it has it),
the three workloads run over HTTP on 127.0.0.1, in this order, then the server stops:

  (a) shared prefixes: `--groups` prefixes of ~`--prefix-tokens` tokens (+-10%), each
      request one of them (uniformly drawn) + a unique `--suffix-tokens` suffix. Open loop:
      Poisson arrivals at `--rate-a` per second.
  (b) no sharing: unique prompts of `--unique-min-tokens`..`--unique-max-tokens`. Closed
      loop: `--concurrency-b` clients, each sending its next request when the last ends.
  (c) multi-turn chat: `--sessions` conversations of `--turns` turns; a turn's prompt is
      the previous prompt + the previous answer + a new user message (~`--user-tokens`).
      Sessions start as a Poisson process (`--session-rate` per second), each runs its
      turns one after another, concurrently with the other sessions.

Why these arrival processes: (a) and (c) are about time to first token at a given offered
load, so they are open loop (a closed loop would let a slow policy slow its own arrivals
and hide its queueing); the default rates load the fleet without overloading it under
power_of_two on this machine. (b) asks what cache awareness costs when there is nothing to
gain, which is a throughput question, so it is closed loop at a fixed concurrency that
keeps every replica busy: the fleet's capacity under each policy.
Every request is streamed `/v1/completions` with a token-id prompt (the OpenAI API's list
of ints), greedy, `--max-tokens` tokens with EOS ignored. The requests are the same for
every policy (seeded); in (c) each turn's prompt includes the previous answer (its text,
tokenized again, as a chat client would send it), which greedy decoding makes the same
for every policy.

Measured per (workload, policy):
  * TTFT p50 / p99: from the request's send time (its scheduled arrival in the open loops)
    to the first streamed token, at the client.
  * output tok/s: completion tokens (from the stream's usage event) / the workload's wall
    time, first send to last answer.
  * hit ratio: prompt tokens served from the replicas' prefix caches / prompt tokens sent,
    from /metrics: the replicas' `gaudi_serve_engine_num_prefix_hit_tokens_total`
    (deltas over the workload, summed over replicas); the request-side view
    (usage.prompt_tokens_details.cached_tokens) is in the JSON too. A request preempted
    for lack of KV blocks and recomputed may hit its own blocks: `preempted` counts them.
  * (a) share of ideal: hit tokens / ideal hit tokens, the ideal being each shared prefix
    computed once in the fleet (by the one replica its group needs), every later request
    of the group hitting its whole blocks: sum over requests of floor(prefix / block) *
    block, minus that once per group (routing_workloads.SharedPrefixes.ideal_hit_tokens).
  * imbalance: max / mean over replicas of the tokens each computed or generated
    (deltas of num_prefill_tokens + num_generated_tokens); 1.0 is even.
  * the router's own metrics where it has them (kv_aware): decisions by reason
    (`gaudi_serve_router_decisions_total`) and the mean decision latency
    (`gaudi_serve_router_decision_latency_seconds`), and mean predicted vs observed TTFT.
A markdown table goes to stdout, the rows to `--out`/routing.json, and a figure (TTFT
p50/p99 and hit ratio per workload and policy) to `--plot` (benchmarks/routing.png).

Goals ([router], issue 12), checked and printed under the table:
  * (a) kv_aware TTFT p50 <= 0.5x power_of_two's, TTFT p99 <= 0.67x prefix_affinity's,
    hit ratio >= 90% of the ideal;
  * (b) kv_aware output tok/s within 5% of power_of_two's.

Machine caveat: the reference machine has 2 CPU cores shared by everything (the replicas,
Ray, the HTTP proxy, the ingress and this client); the replicas contend for cores with
each other and with whatever else runs, so absolute times vary from run to run and a
replica's step time depends on what the other one is doing. Compare policies within one
run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from benchmarks.routing_workloads import (
    MODEL_NAME,
    Request,
    SharedPrefixes,
    WorkloadRun,
    chat_sessions,
    run_chat,
    run_closed_loop,
    run_open_loop,
    shared_prefixes,
    unique_prompts,
)

POLICIES = ("kv_aware", "power_of_two", "prefix_affinity", "round_robin")
WORKLOADS = {"a": "shared prefixes", "b": "no sharing", "c": "multi-turn chat"}
MAX_MODEL_LEN = 2048
BLOCK_SIZE = 16
UP_MESSAGE = "gaudi-serve is up at"
STOP_TIMEOUT_S = 120.0
FORCED_STOP_TIMEOUT_S = 60.0
HIT = "num_prefix_hit_tokens"
PREFILL = "num_prefill_tokens"
GENERATED = "num_generated_tokens"
PREEMPTIONS = "num_preemptions"
ENGINE_COUNTERS = (HIT, PREFILL, GENERATED, PREEMPTIONS)


class PortTaken(Exception):
    """gaudi-serve up could not bind the HTTP port chosen for it."""


class Stopped(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, past `except Exception` (the server is stopped
    on the way out)."""


# -- /metrics ----------------------------------------------------------------------------
@dataclass
class MetricsSnapshot:
    """What /metrics says of the model: engine counters per replica, router counters."""

    engine: dict[str, dict[str, float]]  # replica -> counter -> value
    decisions: dict[str, float]  # reason -> count
    histograms: dict[str, tuple[float, float]]  # router histogram -> (sum, count)


ROUTER_HISTOGRAMS = {
    "decision_latency": "gaudi_serve_router_decision_latency_seconds",
    "predicted_ttft": "gaudi_serve_router_predicted_ttft_seconds",
    "observed_ttft": "gaudi_serve_router_observed_ttft_seconds",
}


def parse_metrics(text: str, model: str = MODEL_NAME) -> MetricsSnapshot:
    from prometheus_client.parser import text_string_to_metric_families

    engine: dict[str, dict[str, float]] = {}
    decisions: dict[str, float] = {}
    sums: dict[str, list[float]] = {k: [0.0, 0.0] for k in ROUTER_HISTOGRAMS}
    names = {f"gaudi_serve_engine_{c}{tail}": c for c in ENGINE_COUNTERS for tail in ("", "_total")}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model:
                continue
            if sample.name in names and "replica" in labels:
                engine.setdefault(labels["replica"], {})[names[sample.name]] = sample.value
            elif sample.name == "gaudi_serve_router_decisions_total":
                decisions[labels["reason"]] = sample.value
            for key, prefix in ROUTER_HISTOGRAMS.items():
                if sample.name == f"{prefix}_sum":
                    sums[key][0] += sample.value
                elif sample.name == f"{prefix}_count":
                    sums[key][1] += sample.value
    return MetricsSnapshot(engine, decisions, {k: (s, n) for k, (s, n) in sums.items()})


def settled_metrics(url: str, num_replicas: int, timeout_s: float = 30.0) -> MetricsSnapshot:
    """/metrics once every replica reports and three scrapes 0.5 s apart agree (the
    ingress may answer with a replica's previous stats while a fresh answer is on its
    way)."""
    deadline = time.monotonic() + timeout_s
    last, num_same = None, 0
    while True:
        try:
            snap = parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)
        except httpx.HTTPError:
            snap = None
        if snap is not None and len(snap.engine) >= num_replicas:
            num_same = num_same + 1 if last is not None and snap.engine == last.engine else 0
            if num_same >= 2:
                return snap
            last = snap
        if time.monotonic() > deadline:
            if last is None:
                raise TimeoutError(f"/metrics showed no {num_replicas} replicas in {timeout_s}s")
            print("  warning: replica counters did not settle; using the last scrape")
            return last
        time.sleep(0.5)


def deltas(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, dict[str, float]]:
    """replica -> counter -> increase over the workload."""
    return {
        replica: {
            c: values.get(c, 0.0) - before.engine.get(replica, {}).get(c, 0.0) for c in values
        }
        for replica, values in after.engine.items()
    }


# -- the server --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_config(args: argparse.Namespace, policy: str, port: int) -> dict:
    return {
        "http": {"host": "127.0.0.1", "port": port},
        "models": [
            {
                "name": MODEL_NAME,
                "path": str(args.model),
                "device": "cpu",
                "dtype": "float32",
                "engine": {
                    "max_model_len": MAX_MODEL_LEN,
                    "block_size": BLOCK_SIZE,
                    "kv_cache_tokens": args.kv_cache_tokens,
                    "max_num_seqs": args.max_num_seqs,
                    "warmup": args.engine_warmup,
                },
                "serve": {"num_replicas": args.replicas, "request_router": policy},
            }
        ],
    }


class Server:
    """`gaudi-serve up` in its own session (a terminal's Ctrl-C reaches only us; we stop it
    with one SIGINT, the graceful way), with every process it started tracked so that
    none outlives us."""

    def __init__(self, args: argparse.Namespace, policy: str):
        self.args = args
        self.policy = policy
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = args.out / f"server_{policy}.log"
        self.process: subprocess.Popen | None = None
        self.started: set = set()  # psutil.Process of everything under it, seen so far

    def start(self, attempts: int = 3) -> None:
        """Start it and wait (with a deadline) until every replica is healthy. A port
        taken between choosing it and binding it (other Ray clusters on this machine) is
        retried with another."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except PortTaken:
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"

    def config(self, port: int) -> dict:
        """The serving config this server runs with (a subclass may change it)."""
        return server_config(self.args, self.policy, port)

    def _start_once(self) -> None:
        config = self.args.out / f"server_{self.policy}.yaml"
        config.write_text(yaml.safe_dump(self.config(self.port)))
        argv = [sys.executable, "-m", "cluster.commands.cli", "up", "--config", str(config)]
        argv += ["--num-cpus", str(self.args.replicas + 4)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + self.args.start_timeout_s
        while time.monotonic() < deadline:
            self._track()
            if self.process.poll() is not None:
                self.process = None
                if "Failed to bind to address" in self.log.read_text(errors="replace"):
                    raise PortTaken(self.port)
                raise RuntimeError(f"gaudi-serve up exited before serving; see {self.log}")
            if UP_MESSAGE in self.log.read_text(errors="replace") and self._all_healthy():
                return
            time.sleep(1.0)
        raise TimeoutError(
            f"gaudi-serve up not serving {self.args.replicas} healthy replicas after "
            f"{self.args.start_timeout_s:g}s; see {self.log}"
        )

    def _all_healthy(self) -> bool:
        try:
            health = httpx.get(f"{self.url}/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        states = (health.get("replicas") or {}).get(MODEL_NAME, {})
        return sum(s == "healthy" for s in states.values()) >= self.args.replicas

    def _track(self) -> None:
        import psutil

        if self.process is None:
            return
        try:
            root = psutil.Process(self.process.pid)
            self.started.update(root.children(recursive=True))
        except psutil.Error:
            pass

    def stop(self) -> list[str]:
        """SIGINT (graceful), a second one if it hangs (forced: Ray still shuts down),
        then SIGKILL; then kill whatever it started that is still alive. Returns what
        had to be killed."""
        import psutil

        if self.process is None:
            return []
        self._track()
        leftovers = []
        for sig, wait_s in (
            (signal.SIGINT, STOP_TIMEOUT_S),
            (signal.SIGINT, FORCED_STOP_TIMEOUT_S),
        ):
            if self.process.poll() is not None:
                break
            self.process.send_signal(sig)
            try:
                self.process.wait(wait_s)
            except subprocess.TimeoutExpired:
                leftovers.append(f"gaudi-serve up ignored {sig.name} for {wait_s:g}s")
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        _, alive = psutil.wait_procs(list(self.started), timeout=30)
        for proc in alive:
            try:
                leftovers.append(f"killed leftover {proc.pid} {proc.name()}")
                proc.kill()
            except psutil.Error:
                pass
        self.process = None
        return leftovers


# -- one policy --------------------------------------------------------------------------
def warm_up(url: str, args: argparse.Namespace, tokenizer) -> None:
    """Unique prompts of several lengths, 4 per replica, 2 per replica at a time: every
    replica gets prefill and decode steps (step-time data for kv_aware) before anything
    is measured; they share nothing with the workloads."""
    from benchmarks.workload import code_prompts

    lengths = (64, 256, 512, 1024)
    prompts = [
        p
        for i, n in enumerate(lengths)
        for p in code_prompts(tokenizer, args.replicas, n, n, seed=args.seed + 100 + i)
    ]
    requests = [Request(p) for p in prompts]
    run = asyncio.run(run_closed_loop(url, requests, 8, 2 * args.replicas, args.workload_timeout_s))
    if run.errors or run.timed_out:
        raise RuntimeError(f"warm-up failed: {run.errors[:3]} (timed out: {run.timed_out})")


def run_policy(args, policy, workloads, tokenizer) -> list[dict]:
    server = Server(args, policy)
    rows = []
    began = time.perf_counter()
    print(f"{policy}: starting gaudi-serve up (log {server.log}) ...", flush=True)
    try:
        server.start()
        startup_s = time.perf_counter() - began
        print(f"{policy}: serving after {startup_s:.0f}s; warming up ...", flush=True)
        warm_up(server.url, args, tokenizer)
        before = settled_metrics(server.url, args.replicas)
        for name in args.workloads:
            run = asyncio.run(run_workload(name, server.url, workloads[name], args, tokenizer))
            after = settled_metrics(server.url, args.replicas)
            row = summarize(name, policy, run, before, after, workloads[name])
            before = after  # one scrape between two workloads: nothing falls in between
            row["startup_s"] = round(startup_s, 1)
            rows.append(row)
            print(f"{policy} ({name}): {json.dumps(_brief(row))}", flush=True)
            for error in run.errors[:3]:
                print(f"  error: {error}", flush=True)
    except Exception as exc:
        print(f"{policy}: failed: {type(exc).__name__}: {exc}", flush=True)
        done = {r["workload"] for r in rows}
        rows += [
            {"workload": n, "policy": policy, "failed": f"{type(exc).__name__}: {exc}"[:500]}
            for n in args.workloads
            if n not in done
        ]
    finally:
        print(f"{policy}: stopping ...", flush=True)
        for line in server.stop():
            print(f"  {line}", flush=True)
    return rows


async def run_workload(name, url, workload, args, tokenizer) -> WorkloadRun:
    if name == "a":
        return await run_open_loop(url, workload.requests, args.max_tokens, args.workload_timeout_s)
    if name == "b":
        return await run_closed_loop(
            url, workload, args.max_tokens, args.concurrency_b, args.workload_timeout_s
        )
    return await run_chat(url, workload, args.max_tokens, tokenizer, args.workload_timeout_s)


def summarize(name, policy, run: WorkloadRun, before, after, workload) -> dict:
    per_replica = deltas(before, after)
    ttfts = [a.ttft_s for a in run.answers]
    num_prompt = sum(a.num_prompt_tokens for a in run.answers)
    hits = sum(d.get(HIT, 0.0) for d in per_replica.values())
    work = [d.get(PREFILL, 0.0) + d.get(GENERATED, 0.0) for d in per_replica.values()]
    cached = [a.num_cached_tokens for a in run.answers]
    row = {
        "workload": name,
        "policy": policy,
        "requests": len(run.answers),
        "errors": len(run.errors),
        "timed_out": run.timed_out,
        "wall_s": round(run.wall_s, 2),
        "ttft_p50_ms": round(_pct(ttfts, 50) * 1e3, 1),
        "ttft_p99_ms": round(_pct(ttfts, 99) * 1e3, 1),
        "ttft_mean_ms": round(statistics.fmean(ttfts) * 1e3, 1) if ttfts else math.nan,
        "output_tok_s": round(sum(a.num_tokens for a in run.answers) / run.wall_s, 1),
        "prompt_tokens": num_prompt,
        "hit_tokens": int(hits),
        "hit_ratio": round(hits / num_prompt, 4) if num_prompt else math.nan,
        "request_cached_ratio": (
            round(sum(cached) / num_prompt, 4) if num_prompt and None not in cached else None
        ),
        "imbalance": round(max(work) / statistics.fmean(work), 3) if any(work) else math.nan,
        "per_replica": per_replica,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "ttfts_ms": [round(t * 1e3, 1) for t in ttfts],
        "preemptions": int(sum(d.get(PREEMPTIONS, 0.0) for d in per_replica.values())),
    }
    if isinstance(workload, SharedPrefixes):
        ideal = workload.ideal_hit_tokens(BLOCK_SIZE)
        row["ideal_hit_tokens"] = ideal
        row["hit_share_of_ideal"] = round(hits / ideal, 4) if ideal else math.nan
    decisions = {
        reason: int(n - before.decisions.get(reason, 0.0))
        for reason, n in after.decisions.items()
        if n - before.decisions.get(reason, 0.0) > 0
    }
    if after.decisions:
        row["router_decisions"] = decisions
    for key, (total, count) in after.histograms.items():
        total0, count0 = before.histograms.get(key, (0.0, 0.0))
        if count - count0 > 0:
            row[f"router_{key}_mean_ms"] = round(1e3 * (total - total0) / (count - count0), 4)
    return row


def _pct(values: list[float], q: int) -> float:
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _brief(row: dict) -> dict:
    keys = ("requests", "errors", "ttft_p50_ms", "ttft_p99_ms", "output_tok_s", "hit_ratio")
    return {k: row[k] for k in keys} | {"imbalance": row["imbalance"]}


# -- reporting ---------------------------------------------------------------------------
def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| workload | policy | requests | errors | TTFT p50 ms | TTFT p99 ms | output tok/s "
        "| hit ratio | share of ideal | imbalance | preempted | router decisions | decision ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = f"({r['workload']}) {WORKLOADS[r['workload']]}"
        if "failed" in r:
            lines.append(f"| {label} | {r['policy']} | failed: {r['failed'][:120]} ||||||||||")
            continue
        ideal = r.get("hit_share_of_ideal")
        decisions = ", ".join(f"{k} {v}" for k, v in sorted(r.get("router_decisions", {}).items()))
        latency = r.get("router_decision_latency_mean_ms")
        errors = f"{r['errors']}{' (timed out)' if r['timed_out'] else ''}"
        lines.append(
            f"| {label} | {r['policy']} | {r['requests']} | {errors} "
            f"| {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['output_tok_s']:.1f} "
            f"| {100 * r['hit_ratio']:.1f}% "
            f"| {'-' if ideal is None else f'{100 * ideal:.1f}%'} | {r['imbalance']:.2f} "
            f"| {r['preemptions']} "
            f"| {decisions or '-'} | {'-' if latency is None else f'{latency:.3f}'} |"
        )
    return "\n".join(lines)


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals for kv_aware, as lines: met / missed / not measured."""
    by = {(r["workload"], r["policy"]): r for r in rows if "failed" not in r}

    def check(what, workload, key, baseline, factor, at_most=True) -> str:
        ours, base = by.get((workload, "kv_aware")), by.get((workload, baseline))
        if ours is None or base is None:
            return f"- {what}: not measured"
        ratio = ours[key] / base[key] if base[key] else math.nan
        met = ratio <= factor if at_most else ratio >= factor
        return (
            f"- {what}: {'met' if met else 'MISSED'} ({ours[key]:.1f} vs {base[key]:.1f}, "
            f"{ratio:.2f}x)"
        )

    lines = [
        check("(a) TTFT p50 <= 0.5x power_of_two", "a", "ttft_p50_ms", "power_of_two", 0.5),
        check("(a) TTFT p99 <= 0.67x prefix_affinity", "a", "ttft_p99_ms", "prefix_affinity", 0.67),
    ]
    ours = by.get(("a", "kv_aware"))
    if ours is None:
        lines.append("- (a) hit ratio >= 90% of ideal: not measured")
    else:
        share = ours["hit_share_of_ideal"]
        verdict = "met" if share >= 0.9 else "MISSED"
        lines.append(f"- (a) hit ratio >= 90% of ideal: {verdict} ({100 * share:.1f}%)")
    lines.append(
        check(
            "(b) output tok/s within 5% of power_of_two",
            "b",
            "output_tok_s",
            "power_of_two",
            0.95,
            at_most=False,
        )
    )
    return lines


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "failed" not in r]
    workloads = [w for w in WORKLOADS if any(r["workload"] == w for r in done)]
    policies = [p for p in POLICIES if any(r["policy"] == p for r in done)]
    if not workloads:
        return
    fig, axes = plt.subplots(2, len(workloads), figsize=(4.2 * len(workloads), 6.5), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for col, w in enumerate(workloads):
        top, bottom = axes[0][col], axes[1][col]
        for i, p in enumerate(policies):
            r = next((r for r in done if r["workload"] == w and r["policy"] == p), None)
            if r is None:
                continue
            top.bar(i, r["ttft_p99_ms"] / 1e3, 0.7, color=colors[i], alpha=0.35)
            top.bar(i, r["ttft_p50_ms"] / 1e3, 0.7, color=colors[i], label=p)
            bottom.bar(i, 100 * r["hit_ratio"], 0.7, color=colors[i])
            if "ideal_hit_tokens" in r and r["prompt_tokens"]:
                ideal = 100 * r["ideal_hit_tokens"] / r["prompt_tokens"]
                bottom.axhline(ideal, color="black", linestyle="--", linewidth=1)
        top.set_title(f"({w}) {WORKLOADS[w]}")
        top.set_ylabel("TTFT s (solid p50, light p99)")
        bottom.set_ylabel("prefix-hit ratio %" + (" (dashed: ideal)" if w == "a" else ""))
        bottom.set_ylim(0, 100)
        for ax in (top, bottom):
            ax.set_xticks(range(len(policies)), policies, rotation=20, fontsize=8)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, 140), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------
def default_kv_cache_tokens(workload: SharedPrefixes, num_replicas: int) -> int:
    """Room for ceil(groups / replicas) + 0.5 of the longest prefix, in whole blocks, and
    at least max_model_len."""
    longest = max(len(p) for p in workload.prefixes)
    per_replica = math.ceil(len(workload.prefixes) / num_replicas) + 0.5
    tokens = math.ceil(per_replica * longest / BLOCK_SIZE) * BLOCK_SIZE
    return max(tokens, MAX_MODEL_LEN)


def check_kv_cache(workload: SharedPrefixes, args: argparse.Namespace) -> None:
    """The premise of workload (a): no replica can hold every prefix, the fleet can."""
    total = sum(len(p) for p in workload.prefixes)
    if args.kv_cache_tokens >= total:
        raise SystemExit(
            f"--kv-cache-tokens {args.kv_cache_tokens} holds every shared prefix "
            f"({total} tokens): lower it or raise --groups / --prefix-tokens"
        )
    if args.kv_cache_tokens * args.replicas < total:
        raise SystemExit(
            f"--kv-cache-tokens {args.kv_cache_tokens} x {args.replicas} replicas cannot hold "
            f"the shared prefixes ({total} tokens): raise it or lower --groups"
        )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="model folder (default: pycoder)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    p.add_argument("--workloads", default="a,b,c", help="comma-separated: a, b, c")
    p.add_argument("--kv-cache-tokens", type=int, default=None, help="per replica (derived)")
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", type=int, default=8, help="(a) shared prefixes")
    p.add_argument("--prefix-tokens", type=int, default=1024, help="(a) prefix length")
    p.add_argument("--suffix-tokens", type=int, default=32, help="(a) unique suffix length")
    p.add_argument("--requests-a", type=int, default=240)
    p.add_argument("--rate-a", type=float, default=3.0, help="(a) requests per second")
    p.add_argument("--requests-b", type=int, default=384)
    p.add_argument("--unique-min-tokens", type=int, default=200)
    p.add_argument("--unique-max-tokens", type=int, default=400)
    p.add_argument("--concurrency-b", type=int, default=16, help="(b) closed-loop clients")
    p.add_argument("--sessions", type=int, default=24, help="(c) conversations")
    p.add_argument("--turns", type=int, default=5, help="(c) turns per conversation")
    p.add_argument("--first-tokens", type=int, default=768, help="(c) first prompt length")
    p.add_argument("--user-tokens", type=int, default=64, help="(c) later user messages")
    p.add_argument("--session-rate", type=float, default=0.5, help="(c) sessions per second")
    p.add_argument("--engine-warmup", action="store_true", help="warm every bucket at start")
    p.add_argument("--start-timeout-s", type=float, default=300.0)
    p.add_argument("--workload-timeout-s", type=float, default=600.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/routing"))
    p.add_argument("--plot", type=Path, default=Path("benchmarks/routing.png"))
    args = p.parse_args(argv)
    args.policies = [x for x in args.policies.split(",") if x]
    args.workloads = [x for x in args.workloads.split(",") if x]
    for x in args.policies:
        if x not in POLICIES:
            p.error(f"--policies: {x!r} is not one of {', '.join(POLICIES)}")
    for x in args.workloads:
        if x not in WORKLOADS:
            p.error(f"--workloads: {x!r} is not one of {', '.join(WORKLOADS)}")
    if args.replicas < 1:
        p.error(f"--replicas must be >= 1, got {args.replicas}")
    return args


def build_workloads(args: argparse.Namespace, tokenizer) -> dict:
    return {
        "a": shared_prefixes(
            tokenizer,
            args.groups,
            args.prefix_tokens,
            args.suffix_tokens,
            args.requests_a,
            args.rate_a,
            args.seed,
        ),
        "b": unique_prompts(
            tokenizer,
            args.requests_b,
            args.unique_min_tokens,
            args.unique_max_tokens,
            args.seed + 10,
        ),
        "c": chat_sessions(
            tokenizer,
            args.sessions,
            args.turns,
            args.first_tokens,
            args.user_tokens,
            args.session_rate,
            args.seed + 20,
        ),
    }


def prepare(args: argparse.Namespace):
    """What a served-model benchmark does first: `args.model` resolved (default: the bundled
    model), `args.out` made, SIGTERM turned into Stopped (the server is then stopped
    cleanly); returns the model's tokenizer."""
    if args.model is None:
        from engine import default_model_path

        args.model = Path(default_model_path(MODEL_NAME))
    args.model = args.model.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    def on_sigterm(*_):
        raise Stopped("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(args.model)


def main(argv=None) -> int:
    args = parse_args(argv)
    tokenizer = prepare(args)
    workloads = build_workloads(args, tokenizer)
    if args.kv_cache_tokens is None:
        args.kv_cache_tokens = default_kv_cache_tokens(workloads["a"], args.replicas)
    check_kv_cache(workloads["a"], args)
    print(setup_line(args, workloads), flush=True)
    began = time.perf_counter()
    rows: list[dict] = []
    interrupted = False
    try:
        for policy in args.policies:
            rows += run_policy(args, policy, workloads, tokenizer)
    except (KeyboardInterrupt, Stopped):
        print("interrupted: reporting what finished (no figure)", flush=True)
        interrupted = True
    wall_s = time.perf_counter() - began
    order = {w: i for i, w in enumerate(WORKLOADS)}
    rows.sort(key=lambda r: (order[r["workload"]], POLICIES.index(r["policy"])))
    table = markdown_table(rows)
    checks = goals(rows)
    print(f"\n{setup_line(args, workloads)}; wall {wall_s / 60:.1f} min\n")
    print(table)
    print("\nGoals (kv_aware):")
    print("\n".join(checks))
    result = {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.routing", *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_s": round(wall_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "rows": rows,
        "goals": checks,
    }
    (args.out / "routing.json").write_text(json.dumps(result, indent=2))
    (args.out / "routing.md").write_text(table + "\n\n" + "\n".join(checks) + "\n")
    print(f"\nwrote {args.out / 'routing.json'} and {args.out / 'routing.md'}")
    if interrupted:
        return 130
    plot(rows, args.plot, setup_line(args, workloads))
    print(f"wrote {args.plot}")
    return 0


def setup_line(args: argparse.Namespace, workloads: dict) -> str:
    a = workloads["a"]
    return (
        f"{args.replicas} replicas of {MODEL_NAME} (CPU, 1 thread each), kv_cache_tokens "
        f"{args.kv_cache_tokens}/replica; (a) {len(a.prefixes)} prefixes "
        f"({sum(len(p) for p in a.prefixes)} tokens), {len(a.requests)} requests at "
        f"{args.rate_a:g}/s; (b) {args.requests_b} requests, {args.concurrency_b} clients; "
        f"(c) {args.sessions}x{args.turns} turns at {args.session_rate:g} sessions/s; "
        f"max_tokens {args.max_tokens}"
    )


if __name__ == "__main__":
    sys.exit(main())
