"""Quantized weights and KV cache on the bundled code model, side by side in one run.

    .venv/bin/python -m benchmarks.quantization            # ~5 min on 2 busy cores

Systems (pycoder, CPU, fp32 activations):
  * fp32     the unquantized model: the reference
  * int8     int8 weight-only (quantization="int8")
  * int4     int4 weight-only (quantization="int4")
  * fp8-kv   fp32 weights, an FP8 KV cache (kv_cache_dtype="fp8")
Columns:
  * weight bytes: the model's parameters and buffers as loaded (packed weights and their
    scales as stored), and the ratio to fp32's;
  * KV tokens: what a fixed budget (--kv-budget-mib) holds, as the engine sizes its cache
    (budget // KVSpec.bytes_per_token, whole blocks), and the ratio to a bf16 cache's;
  * tok/s: `--num-prompts` prompts x `--max-new` greedy tokens in one batch, per second of
    this process's CPU time and per wall second (the machine is shared: wall time mostly
    measures the neighbours);
  * agreement with fp32's greedy continuations of the same prompts, two ways: teacher-forced
    (at each of the reference's positions, the system's greedy token given the reference's
    prefix: one early flip is counted once, not for every token after it) and free-running
    (tokens equal position by position, and continuations identical to the end);
  * perplexity: teacher-forced over `--ppl-tokens` tokens of held-out text in windows of
    256 (the model card's measure), through the engine's paged forward and KV cache.
Held-out text: the stdlib files pycoder's training left out
(engine.assets.training.corpus.is_held_out), packed as training packs them; the perplexity
windows come from the start of that stream, the prompts from the rest of it.
A quantization the engine does not provide (an older checkout) is reported as such.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F

SYSTEMS = {
    "fp32": {},
    "int8": {"quantization": "int8"},
    "int4": {"quantization": "int4"},
    "fp8-kv": {"kv_cache_dtype": "fp8"},
}
PPL_WINDOW_TOKENS = 256  # engine.assets.training.recipes.SEQ_LEN_TOKENS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--min-len", type=int, default=64, help="prompt tokens, at least")
    p.add_argument("--max-len", type=int, default=128, help="prompt tokens, at most")
    p.add_argument("--max-new", type=int, default=64, help="greedy tokens per prompt")
    p.add_argument("--ppl-tokens", type=int, default=16384, help="held-out tokens scored")
    p.add_argument("--kv-budget-mib", type=float, default=64.0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list (fp32 first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write results here")
    return p.parse_args(argv)


def held_out_data(tokenizer, args) -> tuple[torch.Tensor, list[list[int]]]:
    """(perplexity windows [n, 256], prompts): from the held-out stream, not overlapping."""
    from engine.assets.training.corpus import load_corpus
    from engine.assets.training.packing import eval_windows, pack_documents

    stream = pack_documents(tokenizer, [f.text for f in load_corpus().held_out])
    windows = eval_windows(stream, PPL_WINDOW_TOKENS, args.ppl_tokens)
    rest = stream[windows.numel() :].tolist()
    rng = random.Random(args.seed)
    prompts = []
    for _ in range(args.num_prompts):
        length = rng.randint(args.min_len, args.max_len)
        start = rng.randrange(len(rest) - length)
        prompts.append(rest[start : start + length])
    return windows, prompts


def make_llm(system: str, args):
    from engine import LLM
    from engine.assets import default_model_path

    max_model_len = args.max_len + args.max_new + 16
    return LLM(
        str(default_model_path("pycoder")),
        device="cpu",
        dtype="float32",
        max_num_seqs=args.num_prompts,
        max_model_len=max_model_len,
        kv_cache_tokens=max(args.num_prompts * max_model_len, 16 * PPL_WINDOW_TOKENS + 16),
        warmup=False,
        **SYSTEMS[system],
    )


@torch.inference_mode()
def forced_logits(runner, rows: torch.Tensor, num_logits: int) -> torch.Tensor:
    """The engine's padded forward over `rows` [batch, n] token ids as one prefill (each row
    on its own blocks of the paged KV cache, written and read as any step does) -> logits
    [batch, num_logits, vocab] of the last num_logits positions. NOTE: overwrites cache
    blocks 1.. : run it on an idle engine that generates nothing afterwards."""
    from engine.attention import PagedMetadata

    batch, n = rows.shape
    block_size = runner.block_size
    num_blocks = -(-n // block_size)
    # block 0 is the padding block; row b takes blocks 1 + b * num_blocks ...
    tables = 1 + torch.arange(batch * num_blocks).view(batch, num_blocks)
    slots = (tables[:, :, None] * block_size + torch.arange(block_size)).view(batch, -1)[:, :n]
    positions = torch.arange(n).expand(batch, n)
    return runner.run_forward(
        input_ids=rows,
        positions=positions,
        slot_mapping=slots.reshape(-1),
        block_tables=tables,
        mask=PagedMetadata.causal_mask(positions, num_blocks * block_size),
        num_logits=num_logits,
    )


def perplexity(runner, windows: torch.Tensor, batch: int = 16) -> float:
    """exp(mean NLL) of positions 1..255 of every window, each from its own prefix."""
    nll, count = 0.0, 0
    for rows in windows.split(batch):
        logits = forced_logits(runner, rows, rows.shape[1])[:, :-1].flatten(0, 1).float()
        labels = rows[:, 1:].flatten()
        nll += F.cross_entropy(logits, labels, reduction="sum").item()
        count += labels.numel()
    return math.exp(nll / count)


def forced_agreement(runner, prompts, references) -> tuple[int, int]:
    """(agreeing, total) tokens: the system's greedy token at each position of the reference
    continuation, given the prompt and the reference's tokens before it."""
    agree = total = 0
    for prompt, ref in zip(prompts, references, strict=True):
        rows = torch.tensor([prompt + ref])
        # the logits at positions len(prompt)-1 .. len(prompt)+len(ref)-2 predict ref
        logits = forced_logits(runner, rows, len(ref) + 1)[0, :-1]
        agree += int((logits.argmax(-1) == torch.tensor(ref)).sum())
        total += len(ref)
    return agree, total


def run_system(system: str, args, windows, prompts, reference) -> dict:
    """One system's row; `reference` is fp32's continuations (None when this is fp32)."""
    from engine import SamplingParams
    from engine.loader import KVSpec, load_config
    from engine.quant import model_weight_bytes

    try:
        llm = make_llm(system, args)
    except (TypeError, ValueError, ImportError, NotImplementedError) as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    engine = llm.engine
    runner = engine.executor.runner
    spec = engine.executor.kv_spec
    block_size = engine.config.block_size
    budget = int(args.kv_budget_mib * 2**20)
    bf16 = KVSpec.from_config(load_config(engine.model_path), torch.bfloat16)
    row = {
        "weight_bytes": model_weight_bytes(runner.model),
        "kv_bytes_per_token": spec.bytes_per_token,
        "kv_tokens": budget // spec.bytes_per_token // block_size * block_size,
        "bf16_kv_tokens": budget // bf16.bytes_per_token // block_size * block_size,
    }
    params = SamplingParams(max_tokens=args.max_new, temperature=0.0, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    cpu, wall = time.process_time(), time.perf_counter()
    outs = [o.token_ids for o in llm.generate(prompts, params)]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    num_tokens = sum(map(len, outs))
    row |= {"tokens_per_cpu_s": num_tokens / cpu, "tokens_per_wall_s": num_tokens / wall}
    row["outputs"] = outs
    reference = reference or outs
    agree, total = forced_agreement(runner, prompts, reference)
    row["forced_agreement"] = agree / total
    pairs = list(zip(outs, reference, strict=True))
    row["free_agreement"] = sum(a == b for o, r in pairs for a, b in zip(o, r, strict=True)) / total
    row["num_identical"] = sum(o == r for o, r in pairs)
    row["perplexity"] = perplexity(runner, windows)
    llm.shutdown()
    return row


def print_table(results: dict, args) -> None:
    base = results["fp32"]
    print(
        f"\n{args.num_prompts} held-out prompts ({args.min_len}-{args.max_len} tokens) x "
        f"{args.max_new} greedy tokens; perplexity over {args.ppl_tokens} held-out tokens; "
        f"KV budget {args.kv_budget_mib:g} MiB\n"
    )
    print(
        "| system | weight bytes (vs fp32) | KV tokens in budget (vs bf16 KV) | tok/CPU-s | "
        "tok/wall-s | agreement: forced / free / identical | perplexity (vs fp32) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "unavailable" in r:
            print(f"| {name} | unavailable: {r['unavailable']} | | | | | |")
            continue
        print(
            f"| {name} | {r['weight_bytes'] / 2**20:.2f} MiB "
            f"({r['weight_bytes'] / base['weight_bytes']:.2f}x) | "
            f"{r['kv_tokens']:,} ({r['kv_tokens'] / r['bf16_kv_tokens']:.2f}x) | "
            f"{r['tokens_per_cpu_s']:.0f} | {r['tokens_per_wall_s']:.0f} | "
            f"{r['forced_agreement']:.1%} / {r['free_agreement']:.1%} / "
            f"{r['num_identical']}/{args.num_prompts} | "
            f"{r['perplexity']:.2f} ({r['perplexity'] / base['perplexity'] - 1:+.2%}) |"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.assets import default_model_path
    from engine.loader import load_tokenizer

    systems = args.systems.split(",")
    if systems[0] != "fp32" or any(s not in SYSTEMS for s in systems):
        raise SystemExit(f"--systems: fp32 first, then any of {list(SYSTEMS)}; got {systems}")
    windows, prompts = held_out_data(load_tokenizer(default_model_path("pycoder")), args)
    print(
        f"load average before: {os.getloadavg()}, torch threads {torch.get_num_threads()}, "
        f"{windows.numel()} perplexity tokens, {len(prompts)} prompts"
    )
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for name in systems:
        reference = results["fp32"]["outputs"] if name != "fp32" else None
        results[name] = run_system(name, args, windows, prompts, reference)
        print(f"{name}: done at {time.perf_counter() - started:.0f} s", flush=True)
    print_table(results, args)
    print(f"\nload average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            rows = {n: {k: v for k, v in r.items() if k != "outputs"} for n, r in results.items()}
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
