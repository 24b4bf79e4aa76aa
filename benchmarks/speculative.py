"""Speculative decoding on the bundled code model and its draft, in one run.

    .venv/bin/python -m benchmarks.speculative            # batch 1 and batch 16
    .venv/bin/python -m benchmarks.speculative --model smollm2 --prompts chat --batch-sizes 1

--model smollm2 runs smollm2-135m-instruct with its draft smollm2-135m-instruct-draft (both
prepared by `gaudi-serve models prepare`) instead of pycoder and pycoder-draft; --prompts
chat asks it fixed questions through its chat template instead of the code prompts.

Workload: code-completion prompts cut from held-out Python source (the stdlib slice of
benchmarks.workload.code_prompts), greedy, EOS ignored so every system generates the same
number of tokens. Systems, at batch 1 (requests one at a time) and batch 16 (16 requests
at once, continuous batching):
  * none         gaudi-serve, no speculation (the baseline)
  * draft        gaudi-serve + pycoder-draft, k proposals every step
  * ngram        gaudi-serve + prompt lookup, k proposals where the suffix recurs
  * hybrid       gaudi-serve + prompt lookup where it fills k, else pycoder-draft
  * adaptive     gaudi-serve + pycoder-draft, k chosen per step (0 = plain decode)
  * adaptive-hybrid  the hybrid proposer with k chosen per step
  * hf-assisted  transformers generate(assistant_model=pycoder-draft) (batch 1 only:
                 transformers' assisted generation takes a single sequence)
  * hf-generate  transformers generate without a draft (batch 1, for context)
Each system runs `--repeats` rounds, interleaved with the others; speedups are medians of
per-round ratios to the same round's baseline (load drifts between rounds), throughputs
are medians. On a shared machine wall time mostly measures the neighbours, so throughput
is per second of this process's CPU time (with one torch thread, what wall time would be
on an idle core), and per wall second alongside. Every gaudi-serve system's outputs must
equal `none`'s token for token; transformers' are compared and reported. It also prints
the step costs behind the adaptive rule (engine.speculative.adaptive): forward times by tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from benchmarks.workload import code_prompts

SYSTEMS = ("none", "draft", "ngram", "hybrid", "adaptive", "adaptive-hybrid")
MODELS = ("pycoder", "smollm2")
PROMPTS = ("code", "chat")
CHAT_QUESTIONS = (
    "What is the capital of France?",
    "Write a Python function that returns the nth Fibonacci number.",
    "Explain what a hash table is in two sentences.",
    "Give me three tips for writing clear emails.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Write a haiku about the sea.",
    "Summarise the plot of Romeo and Juliet.",
    "What is the difference between a list and a tuple in Python?",
    "Name five fruits that are rich in vitamin C.",
    "How does a bicycle stay upright?",
    "Write a SQL query that counts the rows of a table named users.",
    "Why is the sky blue?",
    "Translate 'good morning' into French and Spanish.",
    "What is recursion? Give a short example.",
    "List the planets of the solar system in order.",
)


def model_paths(model: str):
    """(target folder, draft folder) of `model`: pycoder and pycoder-draft, or the prepared
    smollm2-135m-instruct and smollm2-135m-instruct-draft."""
    from cluster.env import models_dir
    from engine.assets import (
        DEFAULT_MODEL_NAME,
        DRAFT_MODEL_NAME,
        default_draft_model_path,
        default_model_path,
    )

    if model == "pycoder":
        return default_model_path("pycoder"), default_draft_model_path()
    return (
        default_model_path(DEFAULT_MODEL_NAME, models_dir()),
        default_model_path(DRAFT_MODEL_NAME, models_dir()),
    )


def chat_prompts(tokenizer, num_prompts: int) -> list[list[int]]:
    """The first num_prompts CHAT_QUESTIONS (cycled) as one-turn chats, token ids."""
    questions = [CHAT_QUESTIONS[i % len(CHAT_QUESTIONS)] for i in range(num_prompts)]
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        for q in questions
    ]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-prompts", type=int, default=8, help="prompts at batch 1")
    p.add_argument("--batch", type=int, default=16, help="the large batch size")
    p.add_argument("--min-len", type=int, default=64)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("-k", "--num-speculative-tokens", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list (none first)")
    p.add_argument("--no-hf", action="store_true", help="skip the transformers systems")
    p.add_argument("--batch-sizes", default=None, help="comma list (default: 1,--batch)")
    p.add_argument("--json", default=None, help="write results here")
    p.add_argument("--model", choices=MODELS, default=MODELS[0], help="target and its draft")
    p.add_argument("--prompts", choices=PROMPTS, default=PROMPTS[0], help="chat: smollm2 only")
    return p.parse_args(argv)


def make_llm(system: str, args, batch: int):
    from engine import LLM, SpeculativeConfig

    k = args.num_speculative_tokens
    target, draft = (str(p) for p in model_paths(args.model))
    spec = {
        "none": None,
        "draft": SpeculativeConfig(
            method="draft", num_speculative_tokens=k, adaptive=False, draft_model=draft
        ),
        "ngram": SpeculativeConfig(method="ngram", num_speculative_tokens=k, adaptive=False),
        "hybrid": SpeculativeConfig(
            method="hybrid", num_speculative_tokens=k, adaptive=False, draft_model=draft
        ),
        "adaptive": SpeculativeConfig(
            method="draft", num_speculative_tokens=k, adaptive=True, draft_model=draft
        ),
        "adaptive-hybrid": SpeculativeConfig(
            method="hybrid", num_speculative_tokens=k, adaptive=True, draft_model=draft
        ),
    }[system]
    max_model_len = args.max_len + args.max_new + 16
    return LLM(
        target,
        device="cpu",
        dtype="float32",
        max_num_seqs=batch,
        max_model_len=max_model_len,
        kv_cache_tokens=batch * max_model_len,
        speculative=spec,
    )


class Timer:
    """CPU seconds of this process and wall seconds, around a block."""

    def __enter__(self):
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu_s = time.process_time() - self._cpu
        self.wall_s = time.perf_counter() - self._wall


def run_engine(llm, prompts, args) -> tuple[Timer, list[list[int]]]:
    from engine import SamplingParams

    params = SamplingParams(max_tokens=args.max_new, temperature=0.0, ignore_eos=True)
    with Timer() as timer:
        outs = llm.generate(prompts, params)
    return timer, [o.token_ids for o in outs]


def run_hf(target, draft, prompts, args) -> tuple[Timer, list[list[int]]]:
    """transformers generate, one prompt at a time, with the draft as assistant if given."""
    extra = {"assistant_model": draft} if draft is not None else {}
    outs = []
    timer = Timer().__enter__()
    for prompt in prompts:
        with torch.inference_mode():
            out = target.generate(
                torch.tensor([prompt]),
                max_new_tokens=args.max_new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                **extra,
            )
        outs.append(out[0, len(prompt) :].tolist())
    timer.__exit__()
    return timer, outs


def load_hf_pair(model: str):
    from transformers import AutoModelForCausalLM

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    target, draft = model_paths(model)
    return load(target), load(draft)


def step_costs(llm, batch: int, k: int, context: int) -> dict[str, float]:
    """Median forward+sample CPU time (ms) of warmed all-padding steps at (rows, tokens per
    row): the target at 1 and `batch` rows of 1, 2 and k + 1 tokens, the draft at 1 and
    `batch` rows of 1 and 2 tokens."""
    from engine.model_input import dummy_model_input

    engine = llm.engine
    blocks = -(-context // engine.config.block_size)
    runners = {"target": engine.executor.runner, "draft": engine.strategy.draft.runner}
    cases = [
        (model, rows, query_len)
        for model, lens in (("target", (1, 2, k + 1)), ("draft", (1, 2)))
        for rows in sorted({1, batch})
        for query_len in lens
    ]
    costs = {}
    for model, rows, query_len in cases:
        shape = engine.shaper.decode_shape(rows, blocks, query_len)
        inp = dummy_model_input(shape)
        times = []
        for _ in range(40):
            start = time.process_time()
            runners[model].execute(inp)
            times.append(time.process_time() - start)
        costs[f"{model}, {rows} x {query_len} tokens"] = statistics.median(times) * 1e3
    return costs


def measure(args, batch: int, prompts, hf_pair) -> dict:
    """Every system at one batch size; returns per-system results."""
    systems = args.systems.split(",")
    llms = {name: make_llm(name, args, batch) for name in systems}
    warm = prompts[:2]
    for llm in llms.values():  # first-call costs out of the timings
        run_engine(llm, warm, argparse.Namespace(max_new=8))
    runs: dict[str, list] = {name: [] for name in llms}
    hf_names = ("hf-assisted", "hf-generate") if batch == 1 and not args.no_hf else ()
    runs |= {name: [] for name in hf_names}
    for _ in range(args.repeats):
        for name, llm in llms.items():
            before = llm.engine.stats()
            timer, outs = run_engine(llm, prompts, args)
            runs[name].append((timer, outs, before, llm.engine.stats()))
        for name in hf_names:
            draft = hf_pair[1] if name == "hf-assisted" else None
            timer, outs = run_hf(hf_pair[0], draft, prompts, args)
            runs[name].append((timer, outs, None, None))
    baseline = runs["none"][0][1]
    results = {}
    for name, attempts in runs.items():
        timer, outs, before, after = attempts[-1]
        tokens = sum(map(len, outs))
        # Paired with the baseline of the same round: load drifts between rounds.
        speedups = [b[0].cpu_s / a[0].cpu_s for a, b in zip(attempts, runs["none"], strict=True)]
        row = {
            "cpu_s": statistics.median(a[0].cpu_s for a in attempts),
            "tokens": tokens,
            "tokens_per_s": tokens / statistics.median(a[0].cpu_s for a in attempts),
            "tokens_per_wall_s": tokens / statistics.median(a[0].wall_s for a in attempts),
            "speedup": statistics.median(speedups),
            "speedup_range": (min(speedups), max(speedups)),
            "num_identical": min(
                sum(a == b for a, b in zip(attempt[1], baseline, strict=True))
                for attempt in attempts
            ),
            "num_prompts": len(outs),
        }
        if after is not None and name != "none":
            drafted = after.num_draft_tokens - before.num_draft_tokens
            accepted = after.num_accepted_tokens - before.num_accepted_tokens
            row["acceptance_rate"] = accepted / drafted if drafted else 0.0
            row["verify_steps"] = after.num_verify_steps - before.num_verify_steps
            row["steps"] = after.num_steps - before.num_steps
            row["proposer_s"] = after.proposer_s - before.proposer_s
        results[name] = row
    context = (args.min_len + args.max_len) // 2 + args.max_new // 2
    if "draft" in llms:
        k = args.num_speculative_tokens
        results["step_costs_ms"] = step_costs(llms["draft"], batch, k, context)
    if "adaptive" in llms:
        costs = llms["adaptive"].engine.strategy.costs
        results["adaptive_costs_ms"] = {
            "target": [(n, s * 1e3) for n, s in costs.target_points],
            "draft": [(n, s * 1e3) for n, s in costs.draft_points],
            "host": llms["adaptive"].engine.strategy.host_s * 1e3,
        }
    for llm in llms.values():
        llm.shutdown()
    return results


def print_table(batch: int, results: dict) -> None:
    print(f"\n### batch {batch}\n")
    print(
        "| system | tokens/CPU-s | vs none (min-max) | tokens/wall-s | acceptance | "
        "verify steps / steps | identical |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if not isinstance(r, dict) or "tokens_per_s" not in r:
            continue
        acc = f"{r['acceptance_rate']:.2f}" if "acceptance_rate" in r else "-"
        steps = f"{r['verify_steps']} / {r['steps']}" if "steps" in r else "-"
        print(
            f"| {name} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x "
            f"({r['speedup_range'][0]:.2f}-{r['speedup_range'][1]:.2f}) | "
            f"{r['tokens_per_wall_s']:.0f} | {acc} | {steps} | "
            f"{r['num_identical']}/{r['num_prompts']} |"
        )
    costs = results.get("step_costs_ms", {})
    if costs:
        unit = costs[next(iter(costs))]
        print("\nstep costs (median CPU ms, and relative to the target's 1-token step):")
        for name, ms in costs.items():
            print(f"  {name}: {ms:.2f} ms ({ms / unit:.2f})")
    calibrated = results.get("adaptive_costs_ms")
    if calibrated:
        for model in ("target", "draft"):
            points = ", ".join(f"{n}: {ms:.2f}" for n, ms in calibrated[model])
            print(f"adaptive rule's calibrated {model} costs (tokens: ms): {points}")
        print(f"adaptive rule's host time per step: {calibrated['host']:.2f} ms")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from engine.loader import load_tokenizer

    if args.prompts == "chat" and args.model != "smollm2":
        raise SystemExit(f"--prompts chat needs --model smollm2, got --model {args.model}")
    tokenizer = load_tokenizer(model_paths(args.model)[0])
    num_prompts = max(args.num_prompts, args.batch)
    if args.prompts == "chat":
        prompts = chat_prompts(tokenizer, num_prompts)
    else:
        prompts = code_prompts(tokenizer, num_prompts, args.min_len, args.max_len)
    print(
        f"load average before: {os.getloadavg()}, torch threads {torch.get_num_threads()}, "
        f"{args.max_new} new tokens, prompts {args.min_len}-{args.max_len} tokens, "
        f"k={args.num_speculative_tokens}, model {args.model}, {args.prompts} prompts"
    )
    hf_pair = None if args.no_hf else load_hf_pair(args.model)
    batch_sizes = [int(b) for b in (args.batch_sizes or f"1,{args.batch}").split(",")]
    all_results = {}
    for batch in batch_sizes:
        batch_prompts = prompts[: args.num_prompts if batch == 1 else batch]
        all_results[batch] = measure(args, batch, batch_prompts, hf_pair)
        print_table(batch, all_results[batch])
    print(f"\nload average after: {os.getloadavg()}")
    for batch, results in all_results.items():
        for name in args.systems.split(","):
            r = results[name]
            if r["num_identical"] != r["num_prompts"]:
                print(f"MISMATCH: {name} at batch {batch}: {r['num_identical']}/{r['num_prompts']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
