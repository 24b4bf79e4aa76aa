"""The fleet simulator against real runs: the same traces, simulated and replayed.

    RAY_AUTH_MODE=disabled .venv/bin/python -m benchmarks.simulator_validation          # full
    RAY_AUTH_MODE=disabled .venv/bin/python -m benchmarks.simulator_validation --quick  # smoke
    .venv/bin/python -m benchmarks.simulator_validation --traces steady --replicas 2 \\
        --calibration calib.json --duration-s 60 --out /tmp/validation

Served: the bundled `pycoder` on CPU, fp32, one torch thread per replica
(OMP_NUM_THREADS=1), max_model_len 2048, block size 16, max_num_seqs `--max-num-seqs`
(16), a KV cache of `--kv-cache-tokens` (8,192) per replica: the config of
benchmarks/routing.py (`server_config`), with `replicas + 4` logical CPUs declared so a
second replica gets a CPU of its own (benchmarks.routing.Server).

1. Calibration: `gaudi-serve calibrate --config OUT/serve.yaml` on that very engine config
   (a subprocess with OMP_NUM_THREADS=1, as a replica runs), `--calib-repeats` timed runs
   per shape and `--calib-values-per-dim` bucket values per dimension; or `--calibration
   FILE` reuses one (checked: block size, TP degree, device).
2. Three seeded traces (autoscale/sim/synth.py), `--duration-s` each (75 s), 32 output
   tokens a request, written to OUT/traces/:
     steady          Poisson at 6/s, prompts 256-512 tokens (uniform);
     bursty          Gamma inter-arrivals, CV 3, mean 6/s, prompts 256-512 tokens;
     shared_prefix   Poisson at 3/s; 90% of the requests open with one of 8 prefixes of
                     1,024 tokens (uniform popularity), every prompt ends with 32-128
                     unique tokens. 8 prefixes x 1,024 tokens fill one replica's KV cache
                     (8,192 tokens), so no single replica holds them all while two can.
   The rates (`--rate-scale` multiplies them) load one replica moderately to heavily on
   this project's 2-core machine: one replica held ~8 req/s of 256-512-token prompts in
   benchmarks/autoscaling.py on a quiet machine; a calibration taken while other jobs ran
   put one replica's limit near 6/s, and the shared-prefix trace's near 3.5/s.
3. For each trace x `--replicas` (1, 2) x `--routers` (kv_aware, round_robin), fixed
   replica counts:
   * real: `gaudi-serve up` (benchmarks.routing.Server: its own embedded Ray, stopped with
     SIGINT, every process it started tracked), warmed (benchmarks.routing.warm_up:
     prompts of 64-1,024 tokens, 4 per replica, so kv_aware has every replica's step
     times; then the replay's own warm-up request), the trace replayed open loop
     (autoscale/sim/replay.py: token-id prompts, ignore_eos, max_tokens = output_tokens),
     the server stopped. A fresh server per run: the traces' prompt ids repeat across
     traces (they derive from the line number), so a reused server would hit its cache.
   * serving overhead: after the warm-up, two probes (one cached 16-token prompt, 16
     tokens out): PROBE_REQUESTS requests one at a time on the idle server, then
     PROBE_REQUESTS at once. The single probe's median real TTFT less the simulated one is
     what serving adds to a request outside the engine (HTTP, proxy, ingress,
     tokenization, router, the way back: `serving_overhead_s`); the TPOT gaps at one row
     and at the batch's rows give what it adds to each decode step, fixed + per row
     (streaming tokens out through Serve, which shares this host's cores with the forward:
     `ServingStepCost`, `fit_serving_step`);
   * sim: `simulate` (autoscale/sim/simulate.py) of the same model config and trace with
     the calibration and those overheads (`sim_engine_only` in the JSON: without them).
   Both are summarized by autoscale/sim/summary.py over the same span (arrival of the
   first request to the last event of any request), SLO `--slo-ttft-s` / `--slo-tpot-s`.

Compared per run: output tok/s, TPOT p50, TTFT p50 and p95, as relative errors (sim -
real) / real. Per trace and replica count: which router wins on **TTFT p95** (lower
wins; SLO attainment's winner is shown beside it), in real and in sim, and the winner's
margin, margin = TTFT p95 of the runner-up / the winner's - 1 (under 2%: a tie). With
one replica every router sends everything to it, so there is no winner to find: the
real margin there is the run-to-run noise of two identical configurations, shown but not
judged.

Also per run, request by request (the same trace line in both): the median of real TTFT -
sim TTFT and of real TPOT / sim TPOT (`paired`): a constant TTFT gap is a per-request
cost the simulator leaves out (HTTP, proxy, ingress, router), a TPOT ratio over 1 a
per-step or per-token one.

Goals ([fleet], issue 14), checked and printed under the tables: |error| <= 10% on output
tok/s and TPOT p50, <= 15% on TTFT p50 and p95, every run; with 2+ replicas, the same
winner in sim as in real with the margin within 25% of the real one
(|sim margin - real margin| <= 0.25 x real margin), or a tie in both.

Writes OUT/validation.json (every summary and comparison), OUT/validation.md (the tables
and goals), per run OUT/runs/TRACE-Nx-ROUTER/{real,sim}/ (summary.json, records.jsonl,
samples.jsonl) and the server's log and config, and the figure `--plot` (sim against
real for each metric, with the tolerance band, and the router margins).
`--quick`: the shared-prefix trace only, 20 s, 1 and 2 replicas, both routers, the default
calibration grid: a few minutes; its files go to OUT/quick/ unless --out / --plot say.

Every wait has a deadline: calibration (`--calib-timeout-s`), server start
(`--start-timeout-s`), warm-up and each request (`--request-timeout-s`), the replay as a
whole (last arrival + request timeout + 30 s), the server's stop (benchmarks.routing).
Ctrl-C or SIGTERM stops the replay, stops the server cleanly and reports what finished.

Machine caveat: on 2 shared cores the replicas share the CPUs with Ray, the HTTP proxy,
the ingress and this client, which a calibration taken in one process does not see; run
on an otherwise idle machine, and read the load average recorded with each run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from autoscale.sim.synth import Fixed, PrefixGroups, SynthSpec, Uniform, synthesize
from autoscale.sim.trace import TraceRequest, read_trace, write_trace
from benchmarks.routing import (
    BLOCK_SIZE,
    MAX_MODEL_LEN,
    Server,
    Stopped,
    prepare,
    server_config,
)
from benchmarks.routing import warm_up as warm_up_replicas
from benchmarks.routing_workloads import MODEL_NAME

TRACES = ("steady", "bursty", "shared_prefix")
ROUTERS = ("kv_aware", "round_robin")
# (summary key, label, tolerance on |relative error|): the goals
METRICS = (
    ("output_tok_s", "output tok/s", 0.10),
    ("tpot_p50_s", "TPOT p50", 0.10),
    ("ttft_p50_s", "TTFT p50", 0.15),
    ("ttft_p95_s", "TTFT p95", 0.15),
)
WINNER_KEY = "ttft_p95_s"  # lower wins
MARGIN_TOLERANCE = 0.25
TIE_MARGIN = 0.02  # a winner by less than this is a tie
OUTPUT_TOKENS = 32
BASE_RATES = {"steady": 6.0, "bursty": 6.0, "shared_prefix": 3.0}
BURSTY_CV = 3.0
PREFIX_GROUPS = PrefixGroups(8, 1024, 0.9, "uniform")
QUICK = {"traces": "shared_prefix", "replicas": "1,2", "duration_s": 20.0}
FULL = {"traces": ",".join(TRACES), "replicas": "1,2", "duration_s": 75.0}
REPLAY_GRACE_S = 30.0
CONNECT_TIMEOUT_S = 10.0


# -- comparison (pure) ---------------------------------------------------------------------
def relative_error(sim: float | None, real: float | None) -> float | None:
    """(sim - real) / |real|; None when either is missing or real is 0."""
    if sim is None or real is None or real == 0:
        return None
    return (sim - real) / abs(real)


def compare_run(real: dict, sim: dict) -> dict:
    """Each metric of METRICS: {real, sim, rel_error, tolerance, ok} (ok None: not
    measured)."""
    out = {}
    for key, _, tolerance in METRICS:
        error = relative_error(sim.get(key), real.get(key))
        out[key] = {
            "real": real.get(key),
            "sim": sim.get(key),
            "rel_error": error,
            "tolerance": tolerance,
            "ok": None if error is None else abs(error) <= tolerance,
        }
    return out


def pick_winner(values: dict[str, float | None], lower_wins: bool) -> tuple[str | None, float]:
    """The best router of {router: value} and its margin over the runner-up: runner-up /
    winner - 1 when lower wins, winner / runner-up - 1 when higher wins (>= 0; nan with
    fewer than two values or a zero to divide by). The winner is "tie" when the margin is
    under TIE_MARGIN."""
    known = {k: v for k, v in values.items() if v is not None}
    if not known:
        return None, math.nan
    ranked = sorted(known, key=lambda k: known[k], reverse=not lower_wins)
    if len(ranked) < 2:
        return ranked[0], math.nan
    best, second = known[ranked[0]], known[ranked[1]]
    top, bottom = (second, best) if lower_wins else (best, second)
    if not bottom:
        return ranked[0], math.nan
    margin = top / bottom - 1.0
    return ("tie" if margin < TIE_MARGIN else ranked[0]), margin


def router_verdicts(rows: list[dict]) -> list[dict]:
    """Per (trace, replicas) with two or more routers measured in both real and sim: the
    winner on WINNER_KEY (and on SLO attainment) in each, the margins, and whether the sim
    agrees (same winner, |sim margin - real margin| <= MARGIN_TOLERANCE x real margin;
    both a tie also agrees).
    With one replica `judged` is False (the routers are equivalent)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        if row.get("real") and row.get("sim"):
            groups.setdefault((row["trace"], row["replicas"]), []).append(row)
    verdicts = []
    for (trace, replicas), group in groups.items():
        if len(group) < 2:
            continue
        verdict: dict = {"trace": trace, "replicas": replicas, "judged": replicas > 1}
        for side in ("real", "sim"):
            values = {r["router"]: r[side].get(WINNER_KEY) for r in group}
            winner, margin = pick_winner(values, lower_wins=True)
            slo = {r["router"]: r[side].get("slo_attainment") for r in group}
            slo_winner, slo_margin = pick_winner(slo, lower_wins=False)
            verdict[side] = {
                "winner": winner,
                "margin": margin,
                "slo_winner": slo_winner,
                "slo_margin": slo_margin,
            }
        real, sim = verdict["real"], verdict["sim"]
        verdict["same_winner"] = real["winner"] == sim["winner"]
        verdict["margin_error"] = relative_error(sim["margin"], real["margin"])
        verdict["ok"] = verdict["same_winner"] and (
            real["winner"] == "tie"
            or (
                verdict["margin_error"] is not None
                and abs(verdict["margin_error"]) <= MARGIN_TOLERANCE
            )
        )
        verdicts.append(verdict)
    return verdicts


def goal_lines(rows: list[dict], verdicts: list[dict]) -> list[str]:
    """The goals as lines: per metric how many runs are within tolerance (and the worst),
    and the router verdicts with 2+ replicas."""
    lines = []
    compared = [r for r in rows if r.get("compare")]
    for key, label, tolerance in METRICS:
        cells = [(r, r["compare"][key]) for r in compared if r["compare"][key]["ok"] is not None]
        if not cells:
            lines.append(f"- {label} within {tolerance:.0%}: not measured")
            continue
        met = sum(c["ok"] for _, c in cells)
        worst_row, worst = max(cells, key=lambda rc: abs(rc[1]["rel_error"]))
        verdict = "met" if met == len(cells) else "MISSED"
        lines.append(
            f"- {label} within {tolerance:.0%}: {verdict}, {met}/{len(cells)} runs "
            f"(worst {worst['rel_error']:+.1%}, {run_name(worst_row)})"
        )
    judged = [v for v in verdicts if v["judged"]]
    if not judged:
        lines.append("- same router winner (TTFT p95), margin within 25%: not measured")
    else:
        met = sum(v["ok"] for v in judged)
        verdict = "met" if met == len(judged) else "MISSED"
        lines.append(
            f"- same router winner (TTFT p95), margin within {MARGIN_TOLERANCE:.0%}: "
            f"{verdict}, {met}/{len(judged)} (trace, replicas) pairs with 2+ replicas"
        )
    failed = [r for r in rows if r.get("failed")]
    if failed:
        lines.append(f"- runs that failed (not compared): {len(failed)}")
    return lines


def paired_differences(real_records, sim_records) -> dict:
    """Request by request (the same trace line, completed in both): the median of real TTFT
    - sim TTFT (ms) and of real TPOT / sim TPOT, and over how many requests. A constant
    TTFT gap points at per-request costs the simulator leaves out (HTTP, ingress, router);
    a TPOT ratio away from 1 at per-step or per-token costs."""
    from autoscale.sim.summary import percentile

    sim = {r.index: r for r in sim_records if r.finish_s is not None}
    pairs = [(r, sim[r.index]) for r in real_records if r.finish_s is not None and r.index in sim]
    ttft = [1e3 * (a.ttft_s - b.ttft_s) for a, b in pairs]
    tpot = [a.tpot_s / b.tpot_s for a, b in pairs if a.tpot_s and b.tpot_s]
    p50_ttft, p50_tpot = percentile(ttft, 50), percentile(tpot, 50)
    return {
        "requests": len(pairs),
        "ttft_delta_p50_ms": None if p50_ttft is None else round(p50_ttft, 1),
        "tpot_ratio_p50": None if p50_tpot is None else round(p50_tpot, 3),
    }


def run_name(row: dict) -> str:
    return f"{row['trace']} {row['replicas']}x {row['router']}"


def _num(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"


def _unit(key: str) -> tuple[float, int]:
    """(scale, digits) a metric is shown with: tok/s as is, seconds as ms."""
    return (1.0, 1) if key == "output_tok_s" else (1e3, 0)


def _err(cell: dict) -> str:
    if cell["rel_error"] is None:
        return "-"
    mark = "" if cell["ok"] else " ✗"
    return f"{cell['rel_error']:+.1%}{mark}"


def markdown_tables(rows: list[dict], verdicts: list[dict]) -> str:
    """The per-run table (real / sim and the relative error per metric) and the router
    table."""
    lines = [
        "| trace | replicas | router | requests | output tok/s real / sim | err "
        "| TPOT p50 ms real / sim | err | TTFT p50 ms real / sim | err "
        "| TTFT p95 ms real / sim | err | SLO att. real / sim | hit rate real / sim | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['trace']} | {r['replicas']} | {r['router']} "
        if r.get("failed"):
            lines.append(head + f"| failed: {r['failed'][:100]} |||||||||||")
            continue
        real, sim, c = r["real"], r["sim"], r["compare"]
        cells = [f"{real['requests']}"]
        for key, _, _ in METRICS:
            scale, digits = _unit(key)
            cells.append(f"{_num(real[key], scale, digits)} / {_num(sim[key], scale, digits)}")
            cells.append(_err(c[key]))
        for key in ("slo_attainment", "prefix_hit_rate"):
            cells.append(f"{_num(real[key], 100)}% / {_num(sim[key], 100)}%")
        cells.append(_num(r.get("load_average_1m"), 1.0, 1))
        lines.append(head + "| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| trace | replicas | real: winner (TTFT p95), margin | sim: winner, margin "
        "| margin error | SLO winner real / sim | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        real, sim = v["real"], v["sim"]
        if not v["judged"]:
            verdict = "n/a (one replica: the routers are equivalent; real margin = noise)"
        else:
            verdict = "met" if v["ok"] else "MISSED"
        error = v["margin_error"]
        lines.append(
            f"| {v['trace']} | {v['replicas']} | {real['winner']}, {_num(real['margin'], 100)}% "
            f"| {sim['winner']}, {_num(sim['margin'], 100)}% "
            f"| {'-' if error is None else f'{error:+.0%}'} "
            f"| {real['slo_winner']} / {sim['slo_winner']} | {verdict} |"
        )
    return "\n".join(lines)


# -- traces and calibration ----------------------------------------------------------------
def trace_spec(name: str, duration_s: float, rate_scale: float, seed: int) -> SynthSpec:
    """The SynthSpec of trace `name` (module doc)."""
    rate = BASE_RATES[name] * rate_scale
    output = Fixed(OUTPUT_TOKENS)
    if name == "steady":
        return SynthSpec("poisson", rate, duration_s, seed, prompt=Uniform(256, 512), output=output)
    if name == "bursty":
        return SynthSpec(
            "bursty", rate, duration_s, seed, cv=BURSTY_CV, prompt=Uniform(256, 512), output=output
        )
    return SynthSpec(
        "poisson",
        rate,
        duration_s,
        seed,
        prompt=Uniform(32, 128),
        output=output,
        prefix=PREFIX_GROUPS,
    )


def write_traces(args: argparse.Namespace) -> dict[str, list[TraceRequest]]:
    """Write each trace of args.traces to OUT/traces/NAME.jsonl (seeded: trace i gets seed
    args.seed + i) and read it back, as replay and simulate read it."""
    folder = args.out / "traces"
    folder.mkdir(parents=True, exist_ok=True)
    traces = {}
    for name in args.traces:
        seed = args.seed + TRACES.index(name)
        path = folder / f"{name}.jsonl"
        write_trace(path, synthesize(trace_spec(name, args.duration_s, args.rate_scale, seed)))
        traces[name] = read_trace(path)
    return traces


def calibrate(args: argparse.Namespace, config_path: Path) -> Path:
    """`gaudi-serve calibrate` on config_path (a subprocess, one torch thread), within
    --calib-timeout-s; returns the calib.json path."""
    out = args.out / "calib.json"
    argv = [sys.executable, "-m", "cluster.commands.cli", "calibrate", "--config"]
    argv += [str(config_path), "--out", str(out), "--repeats", str(args.calib_repeats)]
    argv += ["--max-values-per-dim", str(args.calib_values_per_dim)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    log = args.out / "calibrate.log"
    print(f"calibrating (log {log}) ...", flush=True)
    with log.open("w") as f:
        done = subprocess.run(
            argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=args.calib_timeout_s
        )
    if done.returncode != 0:
        raise RuntimeError(f"gaudi-serve calibrate exited {done.returncode}; see {log}")
    return out


def load_cost(path: Path, args: argparse.Namespace):
    """The calibration, refused when measured for another engine config."""
    from autoscale.sim.step_models import check_calibration, load_calibration

    cost = load_calibration(path)
    check_calibration(
        cost,
        model=MODEL_NAME,
        device="cpu",
        dtype="float32",
        tp_size=1,
        block_size=BLOCK_SIZE,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=args.max_num_seqs,
    )
    threads = cost.metadata.get("torch_threads")
    if threads not in (None, 1):
        print(f"warning: {path} was measured with {threads} torch threads, replicas run 1")
    return cost


# -- one run -------------------------------------------------------------------------------
def run_span_s(records) -> float:
    """The last event of any request (arrival, first token, finish): both sides' span."""
    times = [
        t for r in records for t in (r.arrival_s, r.first_token_s, r.finish_s) if t is not None
    ]
    return max(times, default=0.0)


def summary_of(records, samples, args: argparse.Namespace) -> dict:
    from autoscale.sim.summary import summarize

    return summarize(records, samples, args.slo_ttft_s, args.slo_tpot_s, run_span_s(records))


def write_side(folder: Path, summary: dict, records, samples) -> None:
    from autoscale.sim.summary import write_measurements, write_summary

    write_summary(folder, summary)
    write_measurements(folder, records, samples)


def model_dict(args: argparse.Namespace, router: str, replicas: int, port: int) -> dict:
    """The serving config of one run (benchmarks.routing.server_config)."""
    return server_config(argparse.Namespace(**{**vars(args), "replicas": replicas}), router, port)


# Serving's overhead probes: one cached 16-token prompt (a prefix group of its own, so no
# line of a trace shares its ids), 16 tokens out; "single": PROBE_REQUESTS requests one at
# a time on the idle server (one decode row), "batch": PROBE_REQUESTS at once (rows ~8).
PROBE_REQUESTS = 8
PROBE_SPACING_S = 1.0
PROBE = TraceRequest(0.0, 16, 16, prefix_id="serving-overhead-probe", prefix_tokens=16)


def probe_traces() -> dict[str, list[TraceRequest]]:
    return {
        "single": [
            dataclasses.replace(PROBE, arrival_s=i * PROBE_SPACING_S) for i in range(PROBE_REQUESTS)
        ],
        "batch": [PROBE] * PROBE_REQUESTS,
    }


def run_sim(args, cost, trace, router: str, replicas: int, folder: Path, vocab: int, overhead=None):
    """Simulate one run (with serving's overheads, `overhead`: measured_overheads' dict);
    (summary, records), written to folder."""
    from autoscale.sim.simulate import simulate
    from autoscale.sim.step_cost import ServingStepCost

    overhead = overhead or {}
    if overhead:
        cost = ServingStepCost(cost, overhead["per_step_s"], overhead["per_row_s"])
    model = sim_model(args, router, replicas)
    start = time.perf_counter()
    result = simulate(
        model,
        trace,
        cost,
        router=router,
        seed=args.seed,
        vocab_size=vocab,
        request_overhead_s=overhead.get("request_s", 0.0),
    )
    summary = summary_of(result.records, result.samples, args)
    summary["simulator"] = {**result.stats, "wall_s": round(time.perf_counter() - start, 2)}
    write_side(folder, summary, result.records, result.samples)
    return summary, result.records


def sim_model(args, router: str, replicas: int):
    from deployments.config import ModelConfig

    return ModelConfig.model_validate(model_dict(args, router, replicas, 0)["models"][0])


def measured_overheads(args, cost, router: str, replicas: int, probes: dict, vocab: int) -> dict:
    """What serving adds on this server, from the probes' real records against simulated
    ones: per request (the median TTFT gap of the single probe:
    autoscale.sim.simulate.serving_overhead_s) and per decode step (the TPOT gaps at one
    row and at the batch probe's rows, through autoscale.sim.step_cost.fit_serving_step)."""
    from autoscale.sim.simulate import serving_overhead_s, simulate
    from autoscale.sim.step_cost import fit_serving_step

    model = sim_model(args, router, replicas)
    sims = {
        name: simulate(model, trace, cost, router=router, seed=args.seed, vocab_size=vocab)
        for name, trace in probe_traces().items()
    }
    request_s = serving_overhead_s(probes["single"], sims["single"].records)

    def tpot_gap(name: str) -> float:
        real = [r.tpot_s for r in probes[name] if r.tpot_s is not None]
        sim = [r.tpot_s for r in sims[name].records if r.tpot_s is not None]
        if not real or not sim:
            raise ValueError(f"the {name} probe has no TPOT to compare (real {real}, sim {sim})")
        return statistics.median(real) - statistics.median(sim)

    # the batch probe's decode rows: how many of its requests shared each one's replica
    per_replica = Counter(r.replica for r in sims["batch"].records)
    rows_batch = statistics.mean(per_replica[r.replica] for r in sims["batch"].records)
    per_step_s, per_row_s = fit_serving_step(1, tpot_gap("single"), rows_batch, tpot_gap("batch"))
    return {"request_s": request_s, "per_step_s": per_step_s, "per_row_s": per_row_s}


class ValidationServer(Server):
    """benchmarks.routing.Server for one run: `replicas` replicas with `router`, its log
    and config in the run's folder."""

    def __init__(self, args: argparse.Namespace, router: str, replicas: int, folder: Path):
        super().__init__(
            argparse.Namespace(**{**vars(args), "out": folder, "replicas": replicas}), router
        )


async def replay_trace(url: str, trace, args: argparse.Namespace, vocab: int):
    """Replay the trace open loop (autoscale.sim.replay); a SIGINT/SIGTERM or the overall
    deadline stops it. Returns (ReplayResult, whether a signal stopped it)."""
    import httpx

    from autoscale.sim.replay import ReplayConfig, replay, warm_up

    config = ReplayConfig(
        url, MODEL_NAME, vocab, args.request_timeout_s, args.sample_interval_s, probe_timeout_s=2.0
    )
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    # Reads wait up to the request's own deadline: a queued request may see no chunk for
    # many seconds (a 10 s read timeout would count it lost).
    timeout = httpx.Timeout(args.request_timeout_s, connect=CONNECT_TIMEOUT_S)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await warm_up(client, config, 1)
        probes = {}
        for name, probe in probe_traces().items():
            probes[name] = (await replay(probe, config, client, asyncio.Event())).records
        stop = asyncio.Event()
        signalled: list[int] = []
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            signalled.append(sig)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        deadline_s = trace[-1].arrival_s + args.request_timeout_s + REPLAY_GRACE_S
        timer = loop.call_later(deadline_s, stop.set)
        try:
            result = await replay(trace, config, client, stop)
        finally:
            timer.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return result, bool(signalled), probes


def run_real(args, trace, router: str, replicas: int, folder: Path, tokenizer, vocab: int):
    """Start the server, warm it, replay, stop it; (the replay's summary with a "replay"
    entry, records), written to folder/real."""
    server = ValidationServer(args, router, replicas, folder)
    began = time.perf_counter()
    try:
        server.start()
        startup_s = time.perf_counter() - began
        warm_up_replicas(server.url, server.args, tokenizer)
        load_before = os.getloadavg()[0]
        replay_began = time.perf_counter()
        result, signalled, probe = asyncio.run(replay_trace(server.url, trace, args, vocab))
        if signalled:
            raise Stopped("signal during the replay")
        summary = summary_of(result.records, result.samples, args)
        summary["replay"] = {
            "errors": result.errors,
            "probe_errors": result.probe_errors,
            "num_not_sent": result.num_not_sent,
            "is_interrupted": result.is_interrupted,
            "startup_s": round(startup_s, 1),
            "replay_wall_s": round(time.perf_counter() - replay_began, 1),
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        write_side(folder / "real", summary, result.records, result.samples)
        return summary, result.records, probe
    finally:
        for line in server.stop():
            print(f"  {line}", flush=True)


def run_one(args, cost, trace, name: str, router: str, replicas: int, tokenizer, vocab) -> dict:
    row: dict = {"trace": name, "replicas": replicas, "router": router}
    folder = args.out / "runs" / f"{name}-{replicas}x-{router}"
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        print(f"{run_name(row)}: starting the server (log {folder}) ...", flush=True)
        row["real"], records, probe = run_real(
            args, trace, router, replicas, folder, tokenizer, vocab
        )
        overhead = measured_overheads(args, cost, router, replicas, probe, vocab)
        row["serving_overhead"] = {k: round(v, 5) for k, v in overhead.items()}
        row["sim_engine_only"], _ = run_sim(
            args, cost, trace, router, replicas, folder / "sim_engine_only", vocab
        )
        row["sim"], sim_records = run_sim(
            args, cost, trace, router, replicas, folder / "sim", vocab, overhead
        )
    except Exception as exc:
        row["failed"] = f"{type(exc).__name__}: {exc}"[:500]
        print(f"{run_name(row)}: failed: {row['failed']}", flush=True)
        return row
    row["compare"] = compare_run(row["real"], row["sim"])
    row["paired"] = paired_differences(records, sim_records)
    row["load_average_1m"] = row["real"]["replay"]["load_average_1m"][1]
    row["wall_s"] = round(time.perf_counter() - began, 1)
    brief = ", ".join(
        f"{label} {_num(c['real'], *_unit(key))} vs {_num(c['sim'], *_unit(key))} ({_err(c)})"
        for (key, label, _), c in zip(METRICS, row["compare"].values(), strict=True)
    )
    o = row["serving_overhead"]
    print(
        f"{run_name(row)}: real vs sim (serving adds {1e3 * o['request_s']:.0f} ms a request, "
        f"{1e3 * o['per_step_s']:.1f} ms + {1e3 * o['per_row_s']:.2f} ms/row a decode step): "
        f"{brief} [{row['wall_s']:.0f} s]",
        flush=True,
    )
    print(f"  request by request: {json.dumps(row['paired'])}", flush=True)
    return row


# -- figure --------------------------------------------------------------------------------
def plot(rows: list[dict], verdicts: list[dict], path: Path, title: str) -> None:
    """Sim against real per metric (log axes, y = x and the tolerance band; colour: trace,
    marker: replicas, filled: kv_aware), and the router margins (real against sim)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    done = [r for r in rows if r.get("compare")]
    if not done:
        return
    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    colors = dict(zip(TRACES, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    markers = {1: "o", 2: "s", 3: "^", 4: "D"}
    for ax, (key, label, tolerance) in zip(axes.flat, METRICS, strict=False):
        scale = 1.0 if key == "output_tok_s" else 1e3
        values = []
        for r in done:
            c = r["compare"][key]
            if c["real"] is None or c["sim"] is None or c["real"] <= 0 or c["sim"] <= 0:
                continue
            x, y = c["real"] * scale, c["sim"] * scale
            values += [x, y]
            filled = r["router"] == ROUTERS[0]
            ax.scatter(
                x,
                y,
                s=45,
                marker=markers.get(r["replicas"], "v"),
                facecolors=colors.get(r["trace"], "gray") if filled else "none",
                edgecolors=colors.get(r["trace"], "gray"),
            )
        if values:
            low, high = min(values) / 1.5, max(values) * 1.5
            xs = [low, high]
            ax.plot(xs, xs, color="black", linewidth=0.8)
            ax.fill_between(
                xs,
                [x * (1 - tolerance) for x in xs],
                [x * (1 + tolerance) for x in xs],
                color="gray",
                alpha=0.2,
                label=f"±{tolerance:.0%}",
            )
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
            ax.set_xlim(low, high)
            ax.set_ylim(low, high)
        unit = "" if key == "output_tok_s" else " ms"
        ax.set_title(f"{label}{unit}")
        ax.set_xlabel("real")
        ax.set_ylabel("sim")
        ax.legend(fontsize=8, loc="upper left")
    ax = axes.flat[4]
    judged = [v for v in verdicts if v["judged"]]  # one replica: noise, in the table only
    for v in judged:
        x, y = 100 * v["real"]["margin"], 100 * v["sim"]["margin"]
        if math.isnan(x) or math.isnan(y):
            continue
        ax.scatter(
            x,
            y,
            s=45,
            marker=markers.get(v["replicas"], "v"),
            color=colors.get(v["trace"], "gray") if v["same_winner"] else "red",
        )
    top = max([100 * v[s]["margin"] for v in judged for s in ("real", "sim")] + [10.0]) * 1.2
    xs = [0.0, top]
    ax.plot(xs, xs, color="black", linewidth=0.8)
    ax.fill_between(
        xs,
        [x * (1 - MARGIN_TOLERANCE) for x in xs],
        [x * (1 + MARGIN_TOLERANCE) for x in xs],
        color="gray",
        alpha=0.2,
        label=f"±{MARGIN_TOLERANCE:.0%}",
    )
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_title("router margin on TTFT p95 %\n(red: the winners differ)")
    ax.set_xlabel("real")
    ax.set_ylabel("sim")
    ax.legend(fontsize=8, loc="upper left")
    key_ax = axes.flat[5]
    key_ax.axis("off")
    handles = [
        plt.Line2D([], [], linestyle="", marker="o", color=c, label=t)
        for t, c in colors.items()
        if any(r["trace"] == t for r in done)
    ]
    handles += [
        plt.Line2D([], [], linestyle="", marker=m, color="black", label=f"{n} replica(s)")
        for n, m in markers.items()
        if any(r["replicas"] == n for r in done)
    ]
    handles += [
        plt.Line2D([], [], linestyle="", marker="o", color="black", label=f"{ROUTERS[0]} (filled)"),
        plt.Line2D(
            [],
            [],
            linestyle="",
            marker="o",
            markerfacecolor="none",
            color="black",
            label="other router (hollow)",
        ),
    ]
    key_ax.legend(handles=handles, loc="center", fontsize=9)
    fig.suptitle(textwrap.fill(title, 150), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------
def _names(text: str, allowed: tuple[str, ...], option: str, p) -> list[str]:
    names = [x for x in text.split(",") if x]
    for x in names:
        if x not in allowed:
            p.error(f"{option}: {x!r} is not one of {', '.join(allowed)}")
    if not names:
        p.error(f"{option}: name at least one of {', '.join(allowed)}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    from autoscale.router_choice import REQUEST_ROUTERS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    p.add_argument("--traces", default=None, help=f"comma-separated of {', '.join(TRACES)}")
    p.add_argument("--replicas", default=None, help="comma-separated replica counts (1,2)")
    p.add_argument("--routers", default=",".join(ROUTERS), help="comma-separated")
    p.add_argument("--duration-s", type=float, default=None, help="per trace (75; quick 20)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiplies every trace's rate")
    p.add_argument("--calibration", type=Path, default=None, help="reuse this calib.json")
    p.add_argument("--calib-repeats", type=int, default=None, help="(5; quick 3)")
    p.add_argument("--calib-values-per-dim", type=int, default=None, help="(6; quick 4)")
    p.add_argument("--calib-timeout-s", type=float, default=900.0)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: pycoder)")
    p.add_argument("--kv-cache-tokens", type=int, default=8192, help="per replica")
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--slo-ttft-s", type=float, default=1.0)
    p.add_argument("--slo-tpot-s", type=float, default=0.2)
    p.add_argument("--sample-interval-s", type=float, default=0.0, help="fleet probes (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout-s", type=float, default=300.0)
    p.add_argument("--request-timeout-s", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=None, help="(benchmarks/out/simulator_validation)")
    p.add_argument("--plot", type=Path, default=None, help="(benchmarks/simulator_validation.png)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.traces = _names(args.traces or preset["traces"], TRACES, "--traces", p)
    args.routers = _names(args.routers, tuple(REQUEST_ROUTERS), "--routers", p)
    try:
        args.replicas = sorted({int(x) for x in (args.replicas or preset["replicas"]).split(",")})
    except ValueError:
        p.error(f"--replicas: expected comma-separated integers, got {args.replicas!r}")
    if args.replicas[0] < 1:
        p.error(f"--replicas: every count must be >= 1, got {args.replicas}")
    args.duration_s = args.duration_s or preset["duration_s"]
    for name in ("duration_s", "rate_scale", "slo_ttft_s", "slo_tpot_s", "request_timeout_s"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    args.calib_repeats = args.calib_repeats or (3 if args.quick else 5)
    args.calib_values_per_dim = args.calib_values_per_dim or (4 if args.quick else 6)
    out = Path("benchmarks/out/simulator_validation")
    args.out = args.out or (out / "quick" if args.quick else out)
    plot_path = args.out / "simulator_validation.png" if args.quick else None
    args.plot = args.plot or plot_path or Path("benchmarks/simulator_validation.png")
    # benchmarks.routing's server_config / Server / warm_up read these:
    args.engine_warmup = False
    args.workload_timeout_s = args.request_timeout_s
    args.replica_counts = args.replicas
    del args.replicas  # each run sets its own count
    return args


def setup_line(args: argparse.Namespace, traces: dict) -> str:
    sizes = ", ".join(f"{n} {len(t)} req" for n, t in traces.items())
    rates = ", ".join(f"{n} {BASE_RATES[n] * args.rate_scale:g}/s" for n in traces)
    return (
        f"{MODEL_NAME} on CPU (1 thread/replica), kv_cache_tokens {args.kv_cache_tokens}/replica, "
        f"max_num_seqs {args.max_num_seqs}; traces {args.duration_s:g} s ({rates}; {sizes}), "
        f"{OUTPUT_TOKENS} output tokens; replicas {args.replica_counts}, routers "
        f"{', '.join(args.routers)}; SLO ttft {args.slo_ttft_s:g}s tpot {args.slo_tpot_s:g}s"
    )


def main(argv=None) -> int:
    import yaml

    args = parse_args(argv)
    tokenizer = prepare(args)
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    traces = write_traces(args)
    title = setup_line(args, traces)
    print(title, flush=True)
    config_path = args.out / "serve.yaml"
    config_path.write_text(yaml.safe_dump(model_dict(args, args.routers[0], 1, 8000)))
    began = time.perf_counter()
    rows: list[dict] = []
    interrupted = False
    load_before = os.getloadavg()[0]
    try:
        calibration = args.calibration or calibrate(args, config_path)
        cost = load_cost(calibration, args)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"calibration failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stopped):  # subprocess.run has killed the calibration
        print("interrupted during the calibration: nothing measured", file=sys.stderr)
        return 130
    calibration_info = {"path": str(calibration), "metadata": cost.metadata}
    if args.calibration is None:  # measured here: how busy the machine was meanwhile
        calibration_info["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"calibration: {json.dumps(calibration_info | {'metadata': '...'})}", flush=True)
    try:
        for name, trace in traces.items():
            for replicas in args.replica_counts:
                for router in args.routers:
                    rows.append(
                        run_one(args, cost, trace, name, router, replicas, tokenizer, vocab)
                    )
    except (KeyboardInterrupt, Stopped):
        print("interrupted: reporting what finished (no figure)", flush=True)
        interrupted = True
    wall_s = time.perf_counter() - began
    verdicts = router_verdicts(rows)
    tables = markdown_tables(rows, verdicts)
    checks = goal_lines(rows, verdicts)
    load = calibration_info.get("load_average_1m")
    title += f"; calibration {calibration}" + (f" (load 1m {load[0]} -> {load[1]})" if load else "")
    print(f"\n{title}; wall {wall_s / 60:.1f} min\n\n{tables}\n\nGoals:\n" + "\n".join(checks))
    result = {
        "command": " ".join(
            [Path(sys.executable).name, "-m", "benchmarks.simulator_validation", *sys.argv[1:]]
        ),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "setup": title,
        "wall_s": round(wall_s, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "rows": rows,
        "calibration": calibration_info,
        "router_verdicts": verdicts,
        "goals": checks,
    }
    (args.out / "validation.json").write_text(json.dumps(result, indent=1))
    (args.out / "validation.md").write_text(f"{title}\n\n{tables}\n\n" + "\n".join(checks) + "\n")
    print(f"\nwrote {args.out / 'validation.json'} and {args.out / 'validation.md'}")
    if interrupted:
        return 130
    plot(rows, verdicts, args.plot, title)
    print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
