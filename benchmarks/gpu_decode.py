"""Decode speed of a 1B-class Llama on one GPU: CUDA graphs vs eager vs transformers, and
the fraction of the HBM roofline reached.

    .venv/bin/python -m benchmarks.gpu_decode                         # H100/H200, bf16
    .venv/bin/python -m benchmarks.gpu_decode --device cpu --tiny     # CPU smoke run

Model: a Llama built from a LlamaConfig (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 8192, vocab 32000: ~1.1B parameters), random weights, saved in bf16 to a temp
dir (safetensors). `--tiny` shrinks it so the script runs on a CPU in about a minute.

Systems, each at batch 1 and batch 32, greedy, EOS ignored:
  * gaudi-serve graphs  LLM(path, device=..., enable_graphs=True): decode replays CUDA graphs
  * gaudi-serve eager   the same engine with enable_graphs=False
  * transformers        model.generate (sdpa, dynamic or static cache)
Only decode steps are timed: the engine is stepped once its batch has finished prefill
(offline_throughput.time_engine_decode: the whole step, host work included); generate's
step time is (time for N+1 new tokens - time for 1 new token) / N.

Roofline: at batch B one decode step reads every weight once, so the fastest possible step
takes weight_bytes / bandwidth, with bandwidth measured by a large device-to-device copy_
(bytes read + written / time, best of several). fraction = that time / measured step time.
weight_bytes excludes the input embedding table (a step reads only B of its rows) and the
KV cache reads are not counted, so at batch 32 the fraction understates the memory traffic.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.offline_throughput import time_engine_decode

FULL_CONFIG = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=8192,
    vocab_size=32000,
    max_position_embeddings=2048,
)
TINY_CONFIG = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    vocab_size=1024,
    max_position_embeddings=512,
)
GRAPHS, EAGER, HF = "gaudi-serve graphs", "gaudi-serve eager", "transformers generate"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="a tiny model, for a CPU smoke run")
    p.add_argument("--batch-sizes", default="1,32", help="comma list of decode batch sizes")
    p.add_argument("--context", type=int, default=None, help="prompt tokens (128; tiny 32)")
    p.add_argument("--num-steps", type=int, default=None, help="decode steps timed (64; tiny 8)")
    p.add_argument("--hf-cache", default="dynamic", choices=("dynamic", "static"))
    p.add_argument("--copy-mib", type=int, default=None, help="copy buffer (2048; tiny 64)")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.context = args.context or (32 if args.tiny else 128)
    args.num_steps = args.num_steps or (8 if args.tiny else 64)
    args.copy_mib = args.copy_mib or (64 if args.tiny else 2048)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: torch {torch.__version__} sees no CUDA GPU; try --device cpu")
    return args


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build_model(path: Path, device: str, tiny: bool) -> int:
    """Save a random bf16 Llama to path; return the weight bytes one decode step reads."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**(TINY_CONFIG if tiny else FULL_CONFIG))
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not a minute of CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if not config.tie_word_embeddings:  # a step gathers B rows of the input table only
        embed = model.get_input_embeddings().weight
        weight_bytes -= embed.numel() * embed.element_size()
    del model
    free_memory(device)
    return weight_bytes


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def copy_bandwidth(device: str, num_mib: int, repeats: int = 20) -> float:
    """Bytes/s of a device-to-device copy_ (each byte read once and written once), best run."""
    src = torch.empty(num_mib * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - start)
    del src, dst
    free_memory(device)
    return 2 * num_mib * 2**20 / min(times)


def make_prompts(batch: int, context: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(batch)
    return torch.randint(0, vocab, (batch, context), generator=gen).tolist()


def run_engine(path: Path, args, vocab: int, enable_graphs: bool) -> dict:
    """Seconds per decode step at each batch size, and the greedy tokens of a check run."""
    from engine import LLM, SamplingParams

    llm = LLM(
        str(path),
        device=args.device,
        dtype="bfloat16",
        enable_graphs=enable_graphs,
        skip_tokenizer_init=True,
        max_num_seqs=max(args.batch_sizes),
        max_model_len=args.context + args.num_steps + 16,
    )
    try:
        step_s = {
            b: time_engine_decode(llm, b, args.context, args.num_steps) for b in args.batch_sizes
        }
        params = SamplingParams(max_tokens=args.num_steps, temperature=0.0, ignore_eos=True)
        prompts = make_prompts(max(args.batch_sizes), args.context, vocab)
        outputs = [o.token_ids for o in llm.generate(prompts, params)]
        stats = llm.engine.stats()
    finally:
        llm.shutdown()
        del llm
        free_memory(args.device)
    return {
        "step_s": step_s,
        "outputs": outputs,
        "graph_replays": stats.num_graph_replays,
        "eager_runs": stats.num_eager_runs,
        "bucket_misses": stats.num_bucket_misses,
    }


def time_generate(model, ids: torch.Tensor, num_new: int, args) -> float:
    """Seconds for model.generate to add exactly num_new greedy tokens to ids [batch, len]."""
    synchronize(args.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=num_new,
            min_new_tokens=num_new,
            do_sample=False,
            pad_token_id=0,
            cache_implementation=args.hf_cache,
        )
    synchronize(args.device)
    return time.perf_counter() - start


def run_hf(path: Path, args, vocab: int) -> dict:
    """Seconds per decode step of transformers generate: (t(N+1) - t(1)) / N."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, attn_implementation="sdpa"
    )
    model = model.to(args.device).eval()
    n = args.num_steps
    step_s = {}
    for batch in args.batch_sizes:
        ids = torch.tensor(make_prompts(batch, args.context, vocab), device=args.device)
        time_generate(model, ids, n + 1, args)  # warm-up
        first_s = statistics.median(time_generate(model, ids, 1, args) for _ in range(3))
        full_s = statistics.median(time_generate(model, ids, n + 1, args) for _ in range(3))
        step_s[batch] = max(full_s - first_s, 0.0) / n
    del model
    free_memory(args.device)
    return {"step_s": step_s}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.gpu_decode " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    vocab = (TINY_CONFIG if args.tiny else FULL_CONFIG)["vocab_size"]
    rows: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-decode-") as tmp:
        path = Path(tmp)
        weight_bytes = build_model(path, args.device, args.tiny)
        bandwidth = copy_bandwidth(args.device, args.copy_mib)
        if args.device == "cuda":
            rows[GRAPHS] = run_engine(path, args, vocab, enable_graphs=True)
        else:
            skipped[GRAPHS] = "the cpu backend has no graphs (enable_graphs is a no-op there)"
        rows[EAGER] = run_engine(path, args, vocab, enable_graphs=False)
        rows[HF] = run_hf(path, args, vocab)
    roofline_s = weight_bytes / bandwidth
    print(f"\ndevice: {device_name(args.device)}")
    print(f"command: {command}")
    print(
        f"model: {'tiny ' if args.tiny else ''}Llama, {weight_bytes / 1e9:.3f} GB of weights "
        f"read per step (bf16, input embedding excluded); prompt {args.context} tokens, "
        f"{args.num_steps} decode steps timed; transformers cache: {args.hf_cache}"
    )
    print(
        f"copy bandwidth: {bandwidth / 1e9:.0f} GB/s (copy_ of {args.copy_mib} MiB, read + "
        f"write, best of 20) -> roofline step {roofline_s * 1e3:.3f} ms\n"
    )
    print("| system | batch | ms/step | tokens/s | fraction of roofline |")
    print("|---|---|---|---|---|")
    results = {
        "device": device_name(args.device),
        "command": command,
        "weight_bytes": weight_bytes,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "roofline_step_ms": roofline_s * 1e3,
        "rows": [],
    }
    for name, row in rows.items():
        for batch, step_s in row["step_s"].items():
            fraction = roofline_s / step_s if step_s > 0 else float("nan")
            tps = batch / step_s if step_s > 0 else float("nan")
            print(f"| {name} | {batch} | {step_s * 1e3:.3f} | {tps:.0f} | {fraction:.0%} |")
            results["rows"].append(
                {
                    "system": name,
                    "batch": batch,
                    "ms_per_step": step_s * 1e3,
                    "tokens_per_s": tps,
                    "fraction_of_roofline": fraction,
                }
            )
    for name, why in skipped.items():
        print(f"\n{name}: skipped, {why}")
    for name in (GRAPHS, EAGER):
        if name in rows:
            r = rows[name]
            print(
                f"{name}: {r['graph_replays']} graph replays, {r['eager_runs']} eager runs, "
                f"{r['bucket_misses']} bucket misses"
            )
    if GRAPHS in rows:
        same = rows[GRAPHS]["outputs"] == rows[EAGER]["outputs"]
        print(
            f"greedy outputs of graphs and eager token-identical "
            f"({max(args.batch_sizes)} prompts x {args.num_steps} tokens): {same}"
        )
    else:
        same = None
        print("graphs vs eager token identity: not checked (no graph row)")
    results["graphs_eager_identical"] = same
    results["skipped"] = skipped
    if GRAPHS in rows and 1 in rows[GRAPHS]["step_s"]:
        fraction = roofline_s / rows[GRAPHS]["step_s"][1]
        verdict = "met" if fraction >= 0.75 else "NOT met"
        print(f"goal >= 75% of roofline at batch 1 with graphs: {verdict} ({fraction:.0%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
