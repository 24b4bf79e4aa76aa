"""How long one KV-aware routing decision takes, with many replicas and cached prefixes.

    .venv/bin/python -m benchmarks.routing_decision
    .venv/bin/python -m benchmarks.routing_decision --replicas 16 --prefixes 10000

Goal ([router]): p99 < 1 ms with 16 replicas and 10k cached prefixes. Each of `--prefixes`
shared prefixes (`--prefix-tokens` long) is cached on 1-3 random replicas (loaded into
the index as snapshots); every replica has step-time data (prefill and decode), so no
decision falls back, and a steady load of 4 requests per replica is in flight, half of
them decoding.
A decision is `KvAwareRouting.choose`: hash the prompt with the engine's block hash, match
it in the prefix index, predict every replica's TTFT, pick, count it in flight. Timed for
prompts that extend a cached prefix (hits) and prompts that share nothing (misses), and
the hash and the index lookup alone. Pure Python on one core: no Ray, no model.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from autoscale import DECODE, PREFILL, KvAwareRouting
from engine import prefix_block_hashes

BLOCK_SIZE = 16


def build(args: argparse.Namespace) -> tuple[KvAwareRouting, list[list[int]], list[str]]:
    rng = random.Random(0)
    replicas = [f"replica-{i}" for i in range(args.replicas)]
    router = KvAwareRouting(BLOCK_SIZE, rng=random.Random(1))
    prefixes = [
        [rng.randrange(args.vocab) for _ in range(args.prefix_tokens)] for _ in range(args.prefixes)
    ]
    held: dict[str, set[int]] = {r: set() for r in replicas}
    for prefix in prefixes:
        hashes = prefix_block_hashes(prefix, BLOCK_SIZE)
        for replica in rng.sample(replicas, rng.randint(1, min(3, len(replicas)))):
            held[replica].update(hashes)
    for replica in replicas:
        router.index.apply_snapshot(replica, held[replica], next_seq=0)
        model = router.step_time(replica)
        for n in (128, 512, 2048):
            model.observe(PREFILL, n, 0.005 + 5e-5 * n * rng.uniform(0.9, 1.1))
        for rows in range(1, 65):
            context = rows * rng.randrange(100, 4000)
            model.observe(DECODE, rows, 0.01 + 2e-4 * rows + 1e-7 * context, context)
    return router, prefixes, replicas


def time_us(fn, prompts: list[list[int]]) -> list[float]:
    out = []
    for i, prompt in enumerate(prompts):
        start = time.perf_counter_ns()
        fn(i, prompt)
        out.append((time.perf_counter_ns() - start) / 1e3)
    return out


def summary(name: str, samples_us: list[float]) -> str:
    q = statistics.quantiles(samples_us, n=100)
    return (
        f"| {name} | {len(samples_us)} | {statistics.median(samples_us):.0f} | "
        f"{q[98]:.0f} | {max(samples_us):.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--prefixes", type=int, default=10_000)
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--suffix-tokens", type=int, default=64)
    parser.add_argument("--decisions", type=int, default=5_000)
    parser.add_argument("--vocab", type=int, default=32_000)
    args = parser.parse_args()

    setup = time.perf_counter()
    router, prefixes, replicas = build(args)
    setup_s = time.perf_counter() - setup
    gc.collect()
    gc.freeze()  # the index's long-lived sets: keep them out of the collector's scans
    rng = random.Random(2)

    def suffix() -> list[int]:
        return [rng.randrange(args.vocab) for _ in range(args.suffix_tokens)]

    hits = [rng.choice(prefixes) + suffix() for _ in range(args.decisions)]
    misses = [suffix() * (args.prefix_tokens // args.suffix_tokens + 1) for _ in range(500)]
    in_flight: list[str] = []

    def decide(i: int, prompt: list[int]) -> None:
        request_id = f"req-{len(in_flight)}-{i}"
        router.choose(request_id, prompt, replicas)
        if i % 2:  # half the load is past its prefill: decode rows
            router.inflight.on_first_token(request_id)
        in_flight.append(request_id)
        if len(in_flight) > 4 * len(replicas):  # keep a steady load: finish the oldest
            router.inflight.on_finished(in_flight.pop(0))

    rows = [
        summary("decision, prompt extends a cached prefix", time_us(decide, hits)),
        summary("decision, nothing cached", time_us(decide, misses)),
        summary(
            "hash the prompt only",
            time_us(lambda i, p: prefix_block_hashes(p, BLOCK_SIZE), hits[:1000]),
        ),
    ]
    hashed = [prefix_block_hashes(p, BLOCK_SIZE) for p in hits[:1000]]
    rows.append(
        summary(
            "index match only", time_us(lambda i, p: router.index.match(hashed[i]), hits[:1000])
        )
    )
    print(
        f"{args.replicas} replicas, {args.prefixes} cached prefixes of {args.prefix_tokens} "
        f"tokens (+{args.suffix_tokens}-token suffixes), block size {BLOCK_SIZE}; "
        f"{sum(router.index.num_blocks(r) for r in replicas)} (replica, block) entries; "
        f"setup {setup_s:.1f} s"
    )
    print("| what | n | p50 us | p99 us | max us |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
