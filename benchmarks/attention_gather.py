"""Decode attention over the paged cache: ways to gather the context and call SDPA, timed
side by side on one layer's shapes (CPU, fp32).

    .venv/bin/python -m benchmarks.attention_gather
    .venv/bin/python -m benchmarks.attention_gather --batch 64 --blocks 16 --threads 1,2

Variants (each checked equal to the first):
  index+gqa         cache[block_tables] (advanced indexing), SDPA enable_gqa, bool mask
  index_select+gqa  index_select over the flat block table, SDPA enable_gqa, bool mask
  float-bias        the same with the mask as an additive float bias built once per step
                    (SDPA converts a bool mask in every layer): tried, not adopted
  fold-gqa          index_select, the decode query's GQA groups folded into query rows
                    (SDPA reads K/V once per KV head): tried, not adopted
  engine            engine.attention.paged_attention as the engine runs it (the cache
                    write, then index_select + enable_gqa + bool mask)

Host memory is set up as the engine's CPU backend does (`keep_freed_host_memory`); without
it, batch 64 timings were dominated by page faults on the multi-MiB copies. Each thread
count runs in a fresh process: changing torch's thread count inside one
process left every later timing 2-3x slower on the 2-vCPU development machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from engine.attention import PagedMetadata, paged_attention
from engine.devices.cpu import keep_freed_host_memory


def build(batch, blocks, block_size, heads, kv_heads, head_dim, pool_blocks):
    torch.manual_seed(0)
    shape = (pool_blocks, block_size, kv_heads, head_dim)
    k_cache, v_cache = torch.randn(shape), torch.randn(shape)
    context = blocks * block_size
    positions = torch.randint(context // 2, context, (batch, 1))
    mask = PagedMetadata.causal_mask(positions, context)
    paged = PagedMetadata(
        kv_caches=[(k_cache, v_cache)],
        slot_mapping=torch.zeros(batch, dtype=torch.long),  # every write to padding slot 0
        block_tables=torch.randint(1, pool_blocks, (batch, blocks)),
        positions=positions,
        mask=mask,
    )
    query = torch.randn(batch, heads, 1, head_dim)
    key = torch.zeros(batch, kv_heads, 1, head_dim)
    return paged, query, key


def variants(paged, query, key):
    k_cache, v_cache = paged.kv_caches[0]
    batch, _, _, head_dim = query.shape
    kv_heads = k_cache.shape[2]
    module = SimpleNamespace(layer_idx=0)

    def index_gqa():
        k = k_cache[paged.block_tables].view(batch, -1, kv_heads, head_dim).transpose(1, 2)
        v = v_cache[paged.block_tables].view(batch, -1, kv_heads, head_dim).transpose(1, 2)
        return F.scaled_dot_product_attention(query, k, v, attn_mask=paged.mask, enable_gqa=True)

    def gather(cache):
        flat = paged.block_tables.reshape(-1)
        return cache.index_select(0, flat).view(batch, -1, kv_heads, head_dim).transpose(1, 2)

    def index_select_gqa():
        k, v = gather(k_cache), gather(v_cache)
        return F.scaled_dot_product_attention(query, k, v, attn_mask=paged.mask, enable_gqa=True)

    bias = torch.zeros(paged.mask.shape).masked_fill_(~paged.mask, float("-inf"))

    def float_bias():
        k, v = gather(k_cache), gather(v_cache)
        return F.scaled_dot_product_attention(query, k, v, attn_mask=bias, enable_gqa=True)

    def fold_gqa():
        k, v = gather(k_cache), gather(v_cache)
        folded = query.reshape(batch, kv_heads, -1, head_dim)
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=paged.mask)
        return out.view(query.shape)

    def engine():
        out, _ = paged_attention(module, query, key, key, None, paged=paged)
        return out.transpose(1, 2)  # back to [batch, heads, 1, head_dim]

    return {
        "index+gqa": index_gqa,
        "index_select+gqa": index_select_gqa,
        "float-bias": float_bias,
        "fold-gqa": fold_gqa,
        "engine": engine,
    }


def time_us(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--blocks", type=int, default=10, help="context blocks per row")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--pool-blocks", type=int, default=400)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--child-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    paged, query, key = build(
        args.batch,
        args.blocks,
        args.block_size,
        args.heads,
        args.kv_heads,
        args.head_dim,
        args.pool_blocks,
    )
    header = (
        f"batch {args.batch}, context {args.blocks * args.block_size}, heads {args.heads}, "
        f"kv heads {args.kv_heads}, head_dim {args.head_dim}, fp32, one layer"
    )
    if args.child_threads is None:  # the parent: one fresh process per thread count
        print(header)
        print("\n| torch threads | variant | us per layer | vs index+gqa |\n|---|---|---|---|")
        for threads in args.threads.split(","):
            env = {**os.environ, "OMP_NUM_THREADS": threads}
            child = [sys.executable, "-m", "benchmarks.attention_gather", *(argv or sys.argv[1:])]
            subprocess.run([*child, "--child-threads", threads], env=env, check=True)
        return 0
    torch.set_num_threads(args.child_threads)
    keep_freed_host_memory()  # as the engine's CPU backend does: no page faults per copy
    fns = variants(paged, query, key)
    with torch.inference_mode():
        reference = fns["index+gqa"]()
        for name, fn in fns.items():
            torch.testing.assert_close(fn(), reference, rtol=1e-5, atol=1e-5, msg=name)
        base = time_us(fns["index+gqa"], args.repeats)
        for name, fn in fns.items():
            us = base if name == "index+gqa" else time_us(fn, args.repeats)
            print(f"| {args.child_threads} | {name} | {us:.0f} | {base / us:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
