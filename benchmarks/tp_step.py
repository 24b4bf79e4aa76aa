"""Decode step time at tp=1 vs tp=2 on the CPU, and the driver's share of each step.

    .venv/bin/python -m benchmarks.tp_step                       # 32M-param random Llama
    .venv/bin/python -m benchmarks.tp_step --hidden 1024 --layers 8 --markdown out.md

For each tp and decode batch (1 and 32): `batch` requests with 32-token prompts are
prefilled, then `--steps` decode steps of `engine.step()` are timed. Per step:
  step      wall time of engine.step() in the driver
  rank      time inside the rank's execute (forward + sampling; tp=2: rank 0, measured
            in the actor; tp=1: the LocalExecutor's execute)
  driver    step - rank: everything outside the ranks' work. Split into
  host      step - executor.execute (scheduler, input building, output processing) and
  dispatch  executor.execute - rank (tp=2: Ray calls to the ranks, argument transfer,
            waiting for the slower rank; tp=1: ~0)
The model is a random Llama built in a temp dir (no download); fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PROMPT_LEN = 32


def ray_floor_ms(executor, num_calls: int = 50) -> float:
    """One empty remote call to every rank, waited for together: the dispatch floor."""
    import ray

    workers = executor.workers
    ray.get([w.stats.remote() for w in workers])
    start = time.perf_counter()
    for _ in range(num_calls):
        ray.get([w.stats.remote() for w in workers])
    return (time.perf_counter() - start) / num_calls * 1e3


@dataclass(frozen=True)
class Row:
    tp_size: int
    batch: int
    step_ms: float
    rank_ms: float
    executor_ms: float

    @property
    def driver_ms(self) -> float:
        return self.step_ms - self.rank_ms

    @property
    def host_ms(self) -> float:
        return self.step_ms - self.executor_ms

    @property
    def dispatch_ms(self) -> float:
        return self.executor_ms - self.rank_ms

    @property
    def tokens_per_s(self) -> float:
        return self.batch / self.step_ms * 1e3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--tp-sizes", default="1,2")
    p.add_argument("--steps", type=int, default=40, help="timed decode steps per batch")
    p.add_argument("--markdown", default=None, help="append the table to this file")
    return p.parse_args(argv)


def build_model(args, out: Path) -> int:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


class TimedExecute:
    """Wraps executor.execute to add up the driver's time inside it."""

    def __init__(self, executor):
        self.inner = executor.execute
        self.total_s = 0.0
        executor.execute = self

    def __call__(self, inp):
        start = time.perf_counter()
        try:
            return self.inner(inp)
        finally:
            self.total_s += time.perf_counter() - start


def rank0_busy_s(engine, timed: TimedExecute) -> float:
    executor = engine.executor
    if hasattr(executor, "rank_stats"):
        return executor.rank_stats()[0].busy_s
    return timed.total_s  # tp=1: the runner runs inside executor.execute


def measure(llm, batch: int, num_steps: int) -> Row:
    from engine import SamplingParams

    engine = llm.engine
    timed = TimedExecute(engine.executor)
    g = torch.Generator().manual_seed(batch)
    params = SamplingParams(max_tokens=num_steps + 8, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        prompt = torch.randint(3, engine.text_config.vocab_size, (PROMPT_LEN,), generator=g)
        engine.add_request(f"b{batch}-{i}", prompt.tolist(), params)
    while engine.scheduler.waiting or any(s.is_prefilling for s in engine.scheduler.running):
        engine.step()  # prefill (possibly chunked) until every request decodes
    for _ in range(3):
        engine.step()  # warm decode
    busy_before, exec_before = rank0_busy_s(engine, timed), timed.total_s
    start = time.perf_counter()
    for _ in range(num_steps):
        engine.step()
    wall = time.perf_counter() - start
    busy, executed = rank0_busy_s(engine, timed) - busy_before, timed.total_s - exec_before
    while engine.has_unfinished:
        engine.step()
    engine.executor.execute = timed.inner
    ms = 1e3 / num_steps
    return Row(llm.engine.config.tp_size, batch, wall * ms, busy * ms, executed * ms)


def run(args) -> tuple[list[Row], int, dict[int, float]]:
    from cluster.ray_env import ensure_ray
    from engine import LLM

    batches = [int(b) for b in args.batches.split(",")]
    rows, floors = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        num_params = build_model(args, Path(tmp))
        owns_ray = ensure_ray()
        for tp_size in [int(t) for t in args.tp_sizes.split(",")]:
            llm = LLM(
                tmp,
                tp_size=tp_size,
                device="cpu",
                dtype="float32",
                skip_tokenizer_init=True,
                max_num_seqs=max(batches),
                kv_cache_tokens=max(batches) * 256 + 512,
                max_model_len=512,
                warmup=False,
            )
            try:
                rows += [measure(llm, batch, args.steps) for batch in batches]
                if tp_size > 1:
                    floors[tp_size] = ray_floor_ms(llm.engine.executor)
            finally:
                llm.shutdown()
        if owns_ray:
            import ray

            ray.shutdown()
    return rows, num_params, floors


def to_markdown(rows: list[Row], num_params: int, floors: dict[int, float], args) -> str:
    lines = [
        f"Random Llama, {num_params / 1e6:.1f}M params (hidden {args.hidden}, {args.layers} "
        f"layers, {args.heads} heads / {args.kv_heads} KV heads), fp32, decode, "
        f"{args.steps} timed steps, prompt {PROMPT_LEN} tokens.",
        "",
        "| tp | batch | step ms | tok/s | rank ms | driver ms (share) | host ms | dispatch ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.tp_size} | {r.batch} | {r.step_ms:.1f} | {r.tokens_per_s:.0f} | "
            f"{r.rank_ms:.1f} | {r.driver_ms:.1f} ({r.driver_ms / r.step_ms:.0%}) | "
            f"{r.host_ms:.1f} | {r.dispatch_ms:.1f} |"
        )
    lines += [
        "",
        *(
            f"Ray floor at tp={tp}: an empty call to every rank, waited for together: {ms:.1f} ms."
            for tp, ms in floors.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    rows, num_params, floors = run(args)
    table = to_markdown(rows, num_params, floors, args)
    print(table)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
