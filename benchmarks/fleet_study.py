"""A fleet study ([fleet] item 6): Llama-3.1-70B and Llama-3.1-405B on 8-card Gaudi2 /
Gaudi3 / H100 / H200 nodes, in the fleet simulator with the analytic step-time model.

    .venv/bin/python -m benchmarks.fleet_study            # default: the first 20 min
    .venv/bin/python -m benchmarks.fleet_study --full     # the whole one-hour trace
    .venv/bin/python -m benchmarks.fleet_study --quick    # 70B on gaudi3/h100, 2 routers

Per model (benchmarks/fleet_study_setup.py): config.json from the published dimensions,
written to benchmarks/out/fleet_study/configs/; per card the planner's TP degree and KV
cache at max_model_len 8192 and concurrency 16 (bfloat16, fp8 weights where bfloat16 does
not fit a node); a bursty trace (Gamma inter-arrivals, CV 2, no diurnal swing; lognormal
prompts of mean ~1,000 and outputs of mean ~250 tokens, half of the requests opening with
one of 16 shared 384-token prefixes). Each (model, card, router, autoscaling policy) runs
once with at most --max-nodes nodes of replicas, starting from a first guess of the count
the rate needs; then per (model, card) the smallest fixed replica count that meets
--target-attainment with the best router (highest attainment among its autoscaled runs)
is searched (galloping from the best slo run's mean replicas, then bisecting).

Card-hours count the cards of serving and starting replicas (tp per replica), not whole
nodes. Writes benchmarks/out/fleet_study/{quick,default,full}.json and .md, and the figure
benchmarks/fleet_study.png (--quick: benchmarks/out/fleet_study/quick.png).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from multiprocessing import Pool
from pathlib import Path

from autoscale.router_choice import REQUEST_ROUTERS
from autoscale.sim.simulate import simulate
from autoscale.sim.step_models import analytic_cost_for
from autoscale.sim.summary import summarize
from benchmarks.fleet_study_plots import plot_study
from benchmarks.fleet_study_setup import (
    CARDS,
    CARDS_PER_NODE,
    MAX_MODEL_LEN,
    MAX_NUM_SEQS,
    MODELS,
    PLAN_CONCURRENCY,
    choose_deployment,
    estimate_replicas,
    smallest_passing,
    study_trace,
    trace_spec,
    write_model_config,
)
from deployments.config import ModelConfig

OUT_DIR = Path(__file__).parent / "out" / "fleet_study"
FIGURE = Path(__file__).parent / "fleet_study.png"
POLICIES = ("slo", "ongoing_requests")
INITIAL_HEADROOM = 1.5  # autoscaled runs start at ceil(1.5 x the analytic guess)
SERIES_PERIOD_S = 10.0  # the replica counts kept per run, for the figure

MODES = {
    "quick": {
        "duration_s": 600.0,
        "models": ["Llama-3.1-70B"],
        "cards": ["gaudi3", "h100"],
        "routers": ["kv_aware", "round_robin"],
    },
    "default": {"duration_s": 1200.0},
    "full": {"duration_s": 3600.0},
}


@functools.lru_cache(maxsize=4)
def cached_trace(rate: float, duration_s: float, seed: int):
    return study_trace(rate, duration_s, seed)


def model_config(model_key: str, deployment, router: str, serve_count: dict) -> ModelConfig:
    """The serving config of one run; serve_count: {"num_replicas": n} or
    {"autoscaling": {...}}."""
    model = MODELS[model_key]
    return ModelConfig.model_validate(
        {
            "name": model.name,
            "path": str(OUT_DIR / "configs" / model.name),
            "tp_size": deployment.tp_size,
            "engine": {
                "max_model_len": MAX_MODEL_LEN,
                "max_num_seqs": MAX_NUM_SEQS,
                "kv_cache_tokens": deployment.kv_cache_tokens,
            },
            "serve": {
                "slo": {"ttft_s": model.slo_ttft_s, "tpot_s": model.slo_tpot_s},
                "request_router": router,
                "max_ongoing_requests": MAX_NUM_SEQS,
                **serve_count,
            },
        }
    )


def run_one(model_key: str, card: str, router: str, serve_count: dict, args: dict) -> dict:
    """Simulate one configuration over the study trace; its summary row."""
    model = MODELS[model_key]
    deployment = choose_deployment(model.config, card)
    cost = analytic_cost_for(model.config, card, deployment.tp_size, deployment.dtype)
    trace = cached_trace(model.rate, args["duration_s"], args["seed"])
    config = model_config(model_key, deployment, router, serve_count)
    start = time.perf_counter()
    result = simulate(
        config,
        trace,
        cost,
        router=router,
        seed=args["seed"],
        startup_s=model.startup_s,
        kv_cache_tokens=deployment.kv_cache_tokens,
    )
    wall_s = time.perf_counter() - start
    s = summarize(result.records, result.samples, model.slo_ttft_s, model.slo_tpot_s)
    card_hours = (s["replica_seconds"] or 0.0) * deployment.tp_size / 3600.0
    tokens = s["output_tokens"]
    return {
        "model": model.name,
        "card": card,
        "dtype": deployment.dtype,
        "tp_size": deployment.tp_size,
        "router": router,
        "slo_ttft_s": model.slo_ttft_s,
        "slo_tpot_s": model.slo_tpot_s,
        "requests": s["requests"],
        "completed": s["completed"],
        "rejected": s["rejected"],
        "slo_attainment": s["slo_attainment"],
        "ttft_p50_s": s["ttft_p50_s"],
        "ttft_p95_s": s["ttft_p95_s"],
        "tpot_p50_s": s["tpot_p50_s"],
        "tpot_p95_s": s["tpot_p95_s"],
        "output_tokens": tokens,
        "output_tok_s": s["output_tok_s"],
        "prefix_hit_rate": s["prefix_hit_rate"],
        "kv_usage_max": s["kv_usage_max"],
        "card_hours": card_hours,
        "card_hours_per_m_tokens": card_hours / (tokens / 1e6) if tokens else None,
        "mean_replicas": s["mean_replicas"],
        "peak_replicas": s["max_replicas"],
        "num_scale_events": s["num_scale_events"],
        "sim_duration_s": result.duration_s,
        "wall_s": wall_s,
        "stats": {k: v for k, v in result.stats.items() if isinstance(v, int | float | str)},
        "series": _series(result.samples),
    }


def _series(samples) -> list[list[float]]:
    """(time_s, serving + starting, target) every SERIES_PERIOD_S."""
    out, next_s = [], 0.0
    for sample in samples:
        if sample.time_s >= next_s:
            count = sample.num_replicas + sample.num_starting
            out.append([round(sample.time_s, 1), count, sample.target_replicas])
            next_s = sample.time_s + SERIES_PERIOD_S
    return out


def initial_replicas(model_key: str, card: str, max_replicas: int) -> int:
    """The analytic first guess of the replicas the model's rate needs (fleet_study_setup)
    with INITIAL_HEADROOM: the guess prices steps unpadded and ignores bursts, and a fleet
    that starts short pays a whole start-up before help arrives."""
    model = MODELS[model_key]
    deployment = choose_deployment(model.config, card)
    cost = analytic_cost_for(model.config, card, deployment.tp_size, deployment.dtype)
    spec = trace_spec(model.rate, 1.0)
    prompt = spec.prompt.mean + spec.prefix.fraction * spec.prefix.prefix_tokens
    guess = estimate_replicas(cost, model.rate, prompt, spec.output.mean, model.slo_tpot_s)
    return min(max(math.ceil(INITIAL_HEADROOM * guess), 1), max_replicas)


def autoscaled_job(job: tuple) -> dict:
    model_key, card, router, policy, args = job
    deployment = choose_deployment(MODELS[model_key].config, card)
    max_replicas = args["max_nodes"] * deployment.replicas_per_node
    initial = initial_replicas(model_key, card, max_replicas)
    scaling = {
        "policy": policy,
        "min_replicas": 1,
        "max_replicas": max_replicas,
        "initial_replicas": initial,
    }
    if policy == "slo":
        scaling["default_startup_s"] = MODELS[model_key].startup_s
    row = run_one(model_key, card, router, {"autoscaling": scaling}, args)
    return {**row, "policy": policy, "max_replicas": max_replicas, "initial_replicas": initial}


def search_job(job: tuple) -> dict:
    """The smallest fixed replica count that meets the target attainment (module doc)."""
    model_key, card, router, start, args = job
    deployment = choose_deployment(MODELS[model_key].config, card)
    high = 2 * args["max_nodes"] * deployment.replicas_per_node
    probes: dict[int, dict] = {}

    def passes(n: int) -> bool:
        row = run_one(model_key, card, router, {"num_replicas": n}, args)
        row.pop("series")
        probes[n] = row
        return (row["slo_attainment"] or 0.0) >= args["target_attainment"]

    n, tried = smallest_passing(passes, start, 1, high)
    best = probes.get(n) if n is not None else None
    below = probes.get(n - 1) if n is not None else probes.get(high)
    return {
        "model": MODELS[model_key].name,
        "card": card,
        "dtype": deployment.dtype,
        "tp_size": deployment.tp_size,
        "replicas_per_node": deployment.replicas_per_node,
        "router": router,
        "target_attainment": args["target_attainment"],
        "search_high": high,
        "replicas": n,
        "cards": n * deployment.tp_size if n is not None else None,
        "nodes": math.ceil(n / deployment.replicas_per_node) if n is not None else None,
        "attainment": best["slo_attainment"] if best else None,
        "card_hours_per_m_tokens": best["card_hours_per_m_tokens"] if best else None,
        "attainment_one_fewer": below["slo_attainment"] if below else None,
        "tried": tried,
        "probes": [probes[k] for k in tried],
        "wall_s": sum(p["wall_s"] for p in probes.values()),
    }


def best_router(runs: list[dict], model: str, card: str) -> str:
    """The router of the (model, card) with the highest mean attainment over the
    policies; ties go to the lower mean card-hours per million tokens."""
    by_router: dict[str, list[dict]] = {}
    for r in runs:
        if r["model"] == model and r["card"] == card:
            by_router.setdefault(r["router"], []).append(r)

    def score(item):
        rows = item[1]
        attainment = sum(r["slo_attainment"] or 0.0 for r in rows) / len(rows)
        cost = sum(r["card_hours_per_m_tokens"] or math.inf for r in rows) / len(rows)
        return (-round(attainment, 4), cost)

    return min(by_router.items(), key=score)[0]


def search_start(runs: list[dict], model: str, card: str, router: str) -> int:
    """The best router's slo run's mean replicas (rounded): the autoscaler's own answer."""
    for r in runs:
        if (r["model"], r["card"], r["router"], r["policy"]) == (model, card, router, "slo"):
            return max(1, round(r["mean_replicas"] or 1))
    return 1


def _fmt(value, spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def runs_table(runs: list[dict]) -> str:
    lines = [
        "| model | card | dtype, TP | router | policy | SLO att. | TTFT p95 s | TPOT p95 ms "
        "| card-h / M out tok | replicas mean / peak | scale events |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['card']} | {r['dtype']}, TP{r['tp_size']} | {r['router']} "
            f"| {r['policy']} | {_fmt(r['slo_attainment'], '.1%')} | {_fmt(r['ttft_p95_s'])} "
            f"| {_fmt(r['tpot_p95_s'], '.0f', 1000)} | {_fmt(r['card_hours_per_m_tokens'])} "
            f"| {_fmt(r['mean_replicas'], '.1f')} / {r['peak_replicas']} "
            f"| {r['num_scale_events']} |"
        )
    return "\n".join(lines)


def search_table(searches: list[dict]) -> str:
    lines = [
        "| model | card | dtype, TP | router | replicas | cards (nodes) | SLO att. "
        "| att. with one fewer | card-h / M out tok | probes |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in searches:
        if s["replicas"] is None:
            needed = f"> {s['search_high']}"
            cards = f"> {s['search_high'] * s['tp_size']}"
        else:
            needed, cards = str(s["replicas"]), f"{s['cards']} ({s['nodes']})"
        lines.append(
            f"| {s['model']} | {s['card']} | {s['dtype']}, TP{s['tp_size']} | {s['router']} "
            f"| {needed} | {cards} | {_fmt(s['attainment'], '.1%')} "
            f"| {_fmt(s['attainment_one_fewer'], '.1%')} "
            f"| {_fmt(s['card_hours_per_m_tokens'])} | {', '.join(map(str, s['tried']))} |"
        )
    return "\n".join(lines)


def arrivals_per_minute(model_key: str, args: dict) -> list[int]:
    trace = cached_trace(MODELS[model_key].rate, args["duration_s"], args["seed"])
    counts = [0] * math.ceil(args["duration_s"] / 60.0)
    for request in trace:
        counts[min(int(request.arrival_s // 60), len(counts) - 1)] += 1
    return counts


def timeline_of(runs: list[dict], searches: list[dict], args: dict) -> dict | None:
    """Replicas over time of the first model on its first card (gaudi2 when present),
    with the router searched for it, across both policies."""
    if not runs:
        return None
    model, card = runs[0]["model"], runs[0]["card"]
    router = next(
        (s["router"] for s in searches if (s["model"], s["card"]) == (model, card)),
        runs[0]["router"],
    )
    chosen = [r for r in runs if (r["model"], r["card"], r["router"]) == (model, card, router)]
    key = next(k for k, m in MODELS.items() if m.name == model)
    return {
        "model": model,
        "card": card,
        "router": router,
        "rate_per_min": arrivals_per_minute(key, args),
        "runs": [{"policy": r["policy"], "series": r["series"]} for r in chosen],
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes: see MODES")
    mode.add_argument("--full", action="store_true", help="the whole one-hour trace")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=None)
    parser.add_argument("--cards", nargs="+", choices=CARDS, default=None)
    parser.add_argument("--routers", nargs="+", choices=REQUEST_ROUTERS, default=None)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--duration-s", type=float, default=None, help="overrides the mode's")
    parser.add_argument("--max-nodes", type=int, default=4, help="the autoscaler's max fleet")
    parser.add_argument("--target-attainment", type=float, default=0.99)
    parser.add_argument("--no-search", action="store_true", help="skip the cards-needed search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="simulations run in parallel")
    args = parser.parse_args(argv)
    args.mode = "quick" if args.quick else "full" if args.full else "default"
    preset = MODES[args.mode]
    args.duration_s = args.duration_s or preset["duration_s"]
    args.models = args.models or preset.get("models", list(MODELS))
    args.cards = args.cards or preset.get("cards", list(CARDS))
    args.routers = args.routers or preset.get("routers", list(REQUEST_ROUTERS))
    if args.max_nodes < 1 or args.jobs < 1:
        parser.error("--max-nodes and --jobs must be >= 1")
    if not 0.0 < args.target_attainment <= 1.0:
        parser.error(f"--target-attainment must be in (0, 1], got {args.target_attainment}")
    return args


def _map(jobs_fn, jobs: list, num_jobs: int) -> list:
    if num_jobs == 1:
        return [jobs_fn(job) for job in jobs]
    with Pool(num_jobs) as pool:
        return pool.map(jobs_fn, jobs, chunksize=1)


def main(argv=None) -> int:
    args = parse_args(argv)
    shared = {
        "duration_s": args.duration_s,
        "seed": args.seed,
        "max_nodes": args.max_nodes,
        "target_attainment": args.target_attainment,
    }
    for key in args.models:
        write_model_config(OUT_DIR / "configs", MODELS[key])
    started = time.perf_counter()
    jobs = [
        (m, c, r, p, shared)
        for m in args.models
        for c in args.cards
        for r in args.routers
        for p in args.policies
    ]
    print(f"{args.mode}: {len(jobs)} autoscaled runs over {args.duration_s:g} s of trace")
    runs = _map(autoscaled_job, jobs, args.jobs)
    searches = []
    if not args.no_search:
        search_jobs = []
        for m in args.models:
            name = MODELS[m].name
            for c in args.cards:
                router = best_router(runs, name, c)
                search_jobs.append((m, c, router, search_start(runs, name, c, router), shared))
        searches = _map(search_job, search_jobs, args.jobs)
    wall_s = time.perf_counter() - started
    setup = {
        "mode": args.mode,
        "duration_s": args.duration_s,
        "seed": args.seed,
        "max_nodes": args.max_nodes,
        "cards_per_node": CARDS_PER_NODE,
        "target_attainment": args.target_attainment,
        "max_model_len": MAX_MODEL_LEN,
        "max_num_seqs": MAX_NUM_SEQS,
        "plan_concurrency": PLAN_CONCURRENCY,
        "models": {
            MODELS[m].name: {
                "rate": MODELS[m].rate,
                "slo_ttft_s": MODELS[m].slo_ttft_s,
                "slo_tpot_s": MODELS[m].slo_tpot_s,
                "startup_s": MODELS[m].startup_s,
                "num_requests": len(cached_trace(MODELS[m].rate, args.duration_s, args.seed)),
                "trace": repr(trace_spec(MODELS[m].rate, args.duration_s, args.seed)),
                "deployments": {
                    c: choose_deployment(MODELS[m].config, c)._asdict() for c in args.cards
                },
            }
            for m in args.models
        },
        "wall_s": wall_s,
        "cpu_count": os.cpu_count(),
    }
    report = {"setup": setup, "runs": runs, "cards_needed": searches}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{args.mode}.json").write_text(json.dumps(report, indent=1) + "\n")
    text = runs_table(runs) + ("\n\n" + search_table(searches) if searches else "")
    (OUT_DIR / f"{args.mode}.md").write_text(text + "\n")
    print(text)
    figure = OUT_DIR / "quick.png" if args.mode == "quick" else FIGURE
    plot_study(runs, timeline_of(runs, searches, shared), figure)
    print(f"wrote {OUT_DIR / (args.mode + '.json')}, {figure}; {wall_s:.0f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
