"""Offline throughput: gaudi-serve's LLM.generate vs transformers, in one run.

    .venv/bin/python -m benchmarks.offline_throughput            # bundled model, 64 prompts
    .venv/bin/python -m benchmarks.offline_throughput --models smollm2-135m-instruct,pycoder

Workload: 64 prompts of 16-256 tokens cut from stdlib source, 128 new tokens each, greedy,
EOS ignored so every system generates the same number of tokens. Systems:
  * gaudi-serve  LLM.generate (continuous batching, paged KV cache)
  * hf-generate  transformers model.generate, one prompt at a time
  * hf-generate_batch  transformers' own continuous batching
  * bare forward: one transformers decode forward at the engine's batch size and a typical
    context (DynamicCache, sdpa): the ceiling the engine's overhead is measured against;
    our own decode step at the same batch and context is timed alongside.

`--models A,B` runs the whole benchmark once per model, each in a fresh process (a process
that ran transformers' generate_batch keeps its manager thread, which would slow whatever is
timed after it), and ends with one table of every model and system.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.workload import code_prompts, model_list


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: bundled pycoder)")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated model names (engine.assets.MODEL_NAMES) or folders: the whole "
        "benchmark once per model, each in its own process, and one summary table",
    )
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument(
        "--per-prompt-sample",
        type=int,
        default=8,
        help="prompts timed for hf-generate one at a time (it is slow)",
    )
    p.add_argument("--skip", default="", help="comma list of systems to skip")
    p.add_argument("--json", default=None, help="write results here")
    return p.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run_engine(args, prompts):
    from engine import LLM, SamplingParams

    llm = LLM(
        args.model,
        device="cpu",
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_len + args.max_new + 16,
    )
    params = SamplingParams(max_tokens=args.max_new, temperature=0.0, ignore_eos=True)
    llm.generate(prompts[:4], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    before = llm.engine.stats()
    outs, seconds = timed(lambda: llm.generate(prompts, params))
    after = llm.engine.stats()
    tokens = sum(len(o.token_ids) for o in outs)
    real = after.num_real_tokens - before.num_real_tokens
    padded = after.num_padded_tokens - before.num_padded_tokens
    shapes = {
        "warmed_buckets": after.num_warmed_shapes,
        "warmup_s": after.warmup_s,
        "bucket_misses": after.num_bucket_misses - before.num_bucket_misses,
        "padding_ratio": padded / real,
    }
    return llm, {
        "tokens": tokens,
        "seconds": seconds,
        "outputs": [o.token_ids for o in outs],
        "shapes": shapes,
    }


def load_hf(args, path):
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def run_hf_per_prompt(model, args, prompts):
    sample = prompts[: args.per_prompt_sample]

    def go():
        outs = []
        for p in sample:
            with torch.inference_mode():
                g = model.generate(
                    torch.tensor([p]),
                    max_new_tokens=args.max_new,
                    min_new_tokens=args.max_new,
                    do_sample=False,
                    pad_token_id=0,
                )
            outs.append(g[0, len(p) :].tolist())
        return outs

    outs, seconds = timed(go)
    return {"tokens": sum(map(len, outs)), "seconds": seconds, "outputs": outs}


def run_hf_generate_batch(model, args, prompts):
    from transformers import GenerationConfig

    cfg = GenerationConfig(
        max_new_tokens=args.max_new,
        min_new_tokens=args.max_new,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=0,
    )
    model.generate_batch(
        prompts[:4],
        generation_config=GenerationConfig(max_new_tokens=4, do_sample=False, pad_token_id=0),
    )
    # NOTE: generate_batch steps in its own thread; inference_mode here would not reach it.
    result, seconds = timed(lambda: model.generate_batch(prompts, generation_config=cfg))
    tokens = sum(len(r.generated_tokens) for r in result.values())
    return {"tokens": tokens, "seconds": seconds}


def time_bare_decode(model, batch: int, context: int, repeats: int = 10) -> float:
    """Seconds per decode forward of transformers at (batch, context)."""
    from transformers import DynamicCache

    vocab = model.config.vocab_size
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        # A sliding-window layer (Mistral, StarCoder2) past its window can be cropped only
        # if it kept its past states; other layers ignore this.
        cache.activate_past_recording()
        model(torch.randint(0, vocab, (batch, context)), past_key_values=cache, use_cache=True)
        times = []
        for _ in range(repeats):
            ids = torch.randint(0, vocab, (batch, 1))
            start = time.perf_counter()
            model(ids, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - start)
            cache.crop(-1)  # drop the token just added: every repeat sees `context`
    return statistics.median(times)


def time_engine_decode(llm, batch: int, context: int, repeats: int = 10) -> float:
    """Seconds per decode step of our engine (schedule + inputs + forward + sample +
    outputs) at (batch, context), measured by stepping a batch that is mid-decode."""
    from engine import SamplingParams

    engine = llm.engine
    vocab = engine.text_config.vocab_size
    params = SamplingParams(max_tokens=repeats + 3, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"bare-{i}", torch.randint(0, vocab, (context,)).tolist(), params)
    while any(s.is_prefilling for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    while engine.has_unfinished:
        engine.step()
    return statistics.median(times)


def child_argv(args, model: Path, json_path: Path) -> list[str]:
    """The command line that runs this benchmark on one model with the same workload."""
    argv = [sys.executable, "-m", "benchmarks.offline_throughput", "--model", str(model)]
    for flag, value in (
        ("--num-prompts", args.num_prompts),
        ("--min-len", args.min_len),
        ("--max-len", args.max_len),
        ("--max-new", args.max_new),
        ("--max-num-seqs", args.max_num_seqs),
        ("--dtype", args.dtype),
        ("--per-prompt-sample", args.per_prompt_sample),
        ("--skip", args.skip),
        ("--json", json_path),
    ):
        argv += [flag, str(value)]
    return argv


def run_models(args) -> int:
    """The benchmark once per model of --models, each in a fresh process, then one table."""
    models = model_list(args.models)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path, name in models:
            print(f"\n## {name} ({path})", flush=True)
            json_path = Path(tmp) / f"{name}.json"
            subprocess.run(child_argv(args, path, json_path), check=True)
            results[name] = json.loads(json_path.read_text())
    print(f"\nAll models, {args.num_prompts} prompts, {args.max_new} new tokens each:\n")
    print(summary_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def summary_table(results: dict[str, dict]) -> str:
    """One markdown row per model and system: tokens/s and gaudi-serve's speed-up over it,
    then each model's decode step (engine vs transformers' bare forward)."""
    lines = [
        "| model | system | tokens/s | gaudi-serve speed-up |",
        "|---|---|---|---|",
    ]
    for model, result in results.items():
        systems = {k: v for k, v in result.items() if isinstance(v, dict) and "tokens" in v}
        base = systems["gaudi-serve LLM.generate"]["tokens_per_s"]
        for name, row in systems.items():
            tps = row["tokens_per_s"]
            lines.append(f"| {model} | {name} | {tps:.0f} | {base / tps:.2f}x |")
        lines.append(
            f"| {model} | decode step: engine / transformers bare forward "
            f"| {result['engine_decode_ms']:.1f} / {result['bare_decode_ms']:.1f} ms | |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.models:
        return run_models(args)
    torch.manual_seed(0)
    skip = set(filter(None, args.skip.split(",")))
    from engine.assets import default_model_path
    from engine.loader import load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model or default_model_path("pycoder"))
    args.model = str(path)  # the engine and every peer load the same folder
    tokenizer = load_tokenizer(path)
    prompts = code_prompts(tokenizer, args.num_prompts, args.min_len, args.max_len)
    llm, ours = run_engine(args, prompts)
    rows = {"gaudi-serve LLM.generate": ours}
    batch = min(args.max_num_seqs, args.num_prompts)
    context = (args.min_len + args.max_len) // 2 + args.max_new // 2
    # NOTE: timed before any transformers peer runs: generate_batch leaves its manager
    # thread behind, which competes for the GIL with whatever is timed after it.
    step_s = time_engine_decode(llm, batch, context)
    llm.shutdown()
    model = load_hf(args, path)
    bare_s = time_bare_decode(model, batch, context)
    per_prompt = "transformers generate (one prompt at a time)"
    if "per_prompt" not in skip:
        rows[per_prompt] = run_hf_per_prompt(model, args, prompts)
        same = ours["outputs"][: args.per_prompt_sample] == rows[per_prompt]["outputs"]
    else:
        same = None
    if "generate_batch" not in skip:
        rows["transformers generate_batch"] = run_hf_generate_batch(model, args, prompts)
    base = ours["tokens"] / ours["seconds"]
    print(
        f"\n{args.num_prompts} prompts of {args.min_len}-{args.max_len} tokens, "
        f"{args.max_new} new tokens each, greedy, {args.dtype}, "
        f"torch threads={torch.get_num_threads()}\n"
    )
    print("| system | tokens | seconds | tokens/s | gaudi-serve speed-up |")
    print("|---|---|---|---|---|")
    results = {}
    for name, r in rows.items():
        tps = r["tokens"] / r["seconds"]
        results[name] = {"tokens": r["tokens"], "seconds": r["seconds"], "tokens_per_s": tps}
        print(f"| {name} | {r['tokens']} | {r['seconds']:.1f} | {tps:.0f} | {base / tps:.2f}x |")
    print(f"\nDecode step at batch {batch}, context {context}:")
    for name, secs in (
        ("transformers bare decode forward", bare_s),
        ("gaudi-serve engine decode step", step_s),
    ):
        print(f"| {name} | {secs * 1e3:.1f} ms | {batch / secs:.0f} tok/s |")
    print(f"engine step / bare forward throughput: {bare_s / step_s:.0%}")
    print(f"end-to-end engine tokens/s / bare forward tokens/s: {base / (batch / bare_s):.0%}")
    sh = ours["shapes"]
    print(
        f"static shapes: {sh['warmed_buckets']} buckets warmed in {sh['warmup_s']:.1f} s; "
        f"{sh['bucket_misses']} bucket misses; padding ratio {sh['padding_ratio']:.2f} "
        "(padded tokens / real tokens)"
    )
    results["shapes"] = sh
    if same is not None:
        print(f"greedy outputs identical to transformers generate on the sampled prompts: {same}")
    results["bare_decode_ms"] = bare_s * 1e3
    results["engine_decode_ms"] = step_s * 1e3
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
