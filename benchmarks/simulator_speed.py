"""How fast the fleet simulator runs: simulated seconds per wall-clock second, per router.

    .venv/bin/python -m benchmarks.simulator_speed
    .venv/bin/python -m benchmarks.simulator_speed --routers kv_aware --duration-s 120

Goal ([fleet]): >= 100x real time for a 16-replica fleet on a 2-core machine. The trace:
Poisson arrivals at `--rate` requests/s over `--duration-s`; every prompt 300-1500 tokens
(uniform) opening with one of 8 shared 256-token prefixes (uniform), outputs 64-384
tokens (uniform); `--replicas` fixed replicas of max_num_seqs 32, a 128k-token KV cache,
max_num_batched_tokens 2048 and max_model_len 4096. Step times are a linear model
(prefill 10 ms + 0.1 ms a token, decode 25 ms + 0.2 ms a row), so the figure measures
the simulator, not a step-cost model. One run per router, in this process, one core;
the figure per wall second and per CPU second of the process (the second is the one to
trust when other work shares the cores: see the load average).
Writes benchmarks/out/simulator_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from autoscale.router_choice import REQUEST_ROUTERS
from autoscale.sim.simulate import simulate
from autoscale.sim.step_cost import PREFILL, StepWork
from autoscale.sim.trace import TraceRequest
from deployments.config import ModelConfig

OUT = Path(__file__).parent / "out" / "simulator_speed.json"
NUM_PREFIX_GROUPS = 8
PREFIX_TOKENS = 256


class LinearCost:
    """Prefill 10 ms + 0.1 ms a token; decode 25 ms + 0.2 ms a row (+ a little context)."""

    def step_s(self, work: StepWork) -> float:
        if work.kind == PREFILL:
            return 0.010 + 1e-4 * work.num_tokens + 1e-6 * work.num_context_tokens
        return 0.025 + 2e-4 * work.num_rows + 5e-7 * work.num_context_tokens


def make_trace(rate: float, duration_s: float, seed: int) -> list[TraceRequest]:
    """The benchmark's trace (module doc)."""
    rng = random.Random(seed)
    t, trace = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return trace
        group = rng.randrange(NUM_PREFIX_GROUPS)
        prompt = rng.randint(300, 1500)
        output = rng.randint(64, 384)
        trace.append(TraceRequest(t, prompt, output, f"sys-{group}", PREFIX_TOKENS))


def model_config(router: str, num_replicas: int) -> ModelConfig:
    engine = {
        "max_model_len": 4096,
        "max_num_seqs": 32,
        "max_num_batched_tokens": 2048,
        "kv_cache_tokens": 131072,
    }
    serve = {"num_replicas": num_replicas, "request_router": router}
    return ModelConfig.model_validate({"name": "m", "engine": engine, "serve": serve})


def run_one(router: str, trace: list[TraceRequest], num_replicas: int) -> dict:
    start, start_cpu = time.perf_counter(), time.process_time()
    result = simulate(model_config(router, num_replicas), trace, LinearCost())
    wall_s = time.perf_counter() - start
    cpu_s = time.process_time() - start_cpu
    done = sorted(r.ttft_s for r in result.records if r.finish_s is not None)
    return {
        "router": router,
        "sim_s": round(result.duration_s, 1),
        "wall_s": round(wall_s, 2),
        "speed_x": round(result.duration_s / wall_s, 1),
        "cpu_s": round(cpu_s, 2),
        "speed_cpu_x": round(result.duration_s / cpu_s, 1),
        "num_completed": len(done),
        "num_steps": result.stats["num_steps"],
        "ttft_p50_s": round(done[len(done) // 2], 4) if done else None,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", nargs="+", choices=REQUEST_ROUTERS, default=None)
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second")
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    routers = args.routers or ["round_robin", "kv_aware"]
    trace = make_trace(args.rate, args.duration_s, args.seed)
    load_before = os.getloadavg()
    print(
        f"trace: {len(trace)} requests over {args.duration_s:g} s at {args.rate:g}/s, "
        f"{args.replicas} replicas; load average {load_before[0]:.2f} (2 cores shared)"
    )
    runs = []
    for router in routers:
        run = run_one(router, trace, args.replicas)
        runs.append(run)
        print(
            f"{router:>16}: {run['sim_s']:.0f} sim-s in {run['wall_s']:.1f} wall-s = "
            f"{run['speed_x']:.1f}x real time; {run['cpu_s']:.1f} CPU-s = "
            f"{run['speed_cpu_x']:.1f}x ({run['num_steps']} steps; "
            f"load average {run['load_average_1m_after']:.2f})"
        )
    report = {
        "trace": {
            "num_requests": len(trace),
            "duration_s": args.duration_s,
            "rate": args.rate,
            "seed": args.seed,
        },
        "num_replicas": args.replicas,
        "cpu_count": os.cpu_count(),
        "load_average_1m_before": round(load_before[0], 2),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
