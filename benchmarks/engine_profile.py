"""Where an offline run's time goes: prefill vs decode steps, page faults and system time,
and the top ops of a decode step (CPU).

    .venv/bin/python -m benchmarks.engine_profile                    # the serve_load workload
    .venv/bin/python -m benchmarks.engine_profile --glibc-malloc     # without the CPU
                                                                     # backend's host-memory setting
    .venv/bin/python -m benchmarks.engine_profile --num-prompts 64 --max-len 256 \
        --max-new 128 --max-num-seqs 64 --profile-decode 64,200     # offline_throughput's

The default workload is what `benchmarks/serve_load.py` sends at 32 clients (128 prompts of
16-128 tokens, 64 new tokens, max_num_seqs 32), run through the engine directly. A step
counts as a prefill step when it computed prompt tokens. Page faults and system time are
this process's (getrusage) over the timed run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-prompts", type=int, default=128)
    p.add_argument("--min-len", type=int, default=16)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--max-new", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument(
        "--glibc-malloc",
        action="store_true",
        help="skip the CPU backend's keep_freed_host_memory (glibc's default behaviour)",
    )
    p.add_argument(
        "--profile-decode",
        default=None,
        metavar="BATCH,CONTEXT",
        help="also profile decode steps at this batch and context (torch profiler)",
    )
    args = p.parse_args(argv)
    if args.profile_decode:
        batch = int(args.profile_decode.split(",")[0])
        if batch > args.max_num_seqs:
            p.error(f"--profile-decode batch {batch} exceeds --max-num-seqs {args.max_num_seqs}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.glibc_malloc:
        import engine.devices.cpu as cpu

        cpu.keep_freed_host_memory = lambda: False
    from transformers import AutoTokenizer

    from benchmarks.workload import code_prompts
    from engine import LLM, SamplingParams
    from engine.assets import default_model_path

    path = str(default_model_path("pycoder"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = code_prompts(tokenizer, args.num_prompts, args.min_len, args.max_len)
    max_model_len = args.max_len + args.max_new + 16
    llm = LLM(path, device="cpu", max_num_seqs=args.max_num_seqs, max_model_len=max_model_len)
    engine = llm.engine
    params = SamplingParams(max_tokens=args.max_new, temperature=0.0, ignore_eos=True)
    llm.generate(prompts[:4], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))

    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params)
    steps = {"prefill": [], "decode": []}
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    while engine.has_unfinished:
        prefilled = engine.stats().num_prefill_tokens
        t = time.perf_counter()
        engine.step()
        kind = "prefill" if engine.stats().num_prefill_tokens > prefilled else "decode"
        steps[kind].append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)

    tokens = args.num_prompts * args.max_new
    malloc = "glibc default" if args.glibc_malloc else "keep_freed_host_memory"
    print(f"{args.num_prompts} prompts of {args.min_len}-{args.max_len} tokens, {args.max_new} new")
    print(f"each, max_num_seqs {args.max_num_seqs}, fp32, host memory: {malloc}\n")
    print("| tokens/s | wall s | system s | minor page faults |\n|---|---|---|---|")
    print(
        f"| {tokens / wall:.0f} | {wall:.2f} | {after.ru_stime - before.ru_stime:.1f} "
        f"| {after.ru_minflt - before.ru_minflt:,} |\n"
    )
    print("| step kind | steps | total s | median ms |\n|---|---|---|---|")
    for kind, times in steps.items():
        if times:
            median_ms = statistics.median(times) * 1e3
            print(f"| {kind} | {len(times)} | {sum(times):.2f} | {median_ms:.1f} |")
    if args.profile_decode:
        batch, context = (int(x) for x in args.profile_decode.split(","))
        print(profile_decode(engine, batch, context))
    return 0


def profile_decode(engine, batch: int, context: int, num_steps: int = 10) -> str:
    """Torch profiler's top ops over `num_steps` decode steps of `batch` sequences at
    `context` tokens."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engine import SamplingParams

    vocab = engine.text_config.vocab_size
    params = SamplingParams(max_tokens=num_steps + 4, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"p{i}", torch.randint(0, vocab, (context,)).tolist(), params)
    while any(s.is_prefilling for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(num_steps):
            engine.step()
    while engine.has_unfinished:
        engine.step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
    return f"\nDecode steps at batch {batch}, context {context}, top ops by self CPU:\n{table}"


if __name__ == "__main__":
    sys.exit(main())
