"""Mixtral's MoE layer with static shapes: dense experts versus a padded dispatch, against
transformers' own (data-dependent) block, timed on the CPU (fp32) at a few token counts.

    .venv/bin/python -m benchmarks.moe_dispatch
    .venv/bin/python -m benchmarks.moe_dispatch --tokens 1,4,512 --repeats 9 --threads 1

Variants (each checked equal to transformers' eager block):
  hf eager        transformers' MixtralSparseMoeBlock, its eager experts (nonzero, a loop
                  over the experts hit, per-expert index lists)
  hf grouped_mm   the same block with transformers' default experts implementation (sort
                  by expert, grouped matmul over per-expert offsets)
  dense (a)       engine.models.mixtral.StaticMoeExperts.dense: every expert on every token,
                  combined with the [tokens, experts] routing weights (zero if unrouted)
  engine          StaticMoeBlock as the engine runs it: (b) with blocks of one row (only
                  the routed experts' weights, gathered) when tokens x k < experts, else (a)
  padded (b)      fixed capacity tokens x k: the assignments sorted by expert into row
                  blocks, each expert's run padded to whole blocks (block = ceil(tokens x k
                  / experts)), the number of blocks bounded statically; each block is
                  multiplied by its expert's weights gathered for it, then scattered back

Shapes are Mixtral-8x7B's ratios scaled down (hidden 512, intermediate 1792, 8 experts,
top-2) so the whole run takes seconds. Best of N rather than the median: the development
machine is shared, and the minimum is the least disturbed run.
"""

from __future__ import annotations

import argparse
import time

import torch

from engine.devices.cpu import keep_freed_host_memory
from engine.models.mixtral import StaticMoeBlock


def build_block(hidden: int, intermediate: int, experts: int, top_k: int, implementation: str):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
    )
    config._experts_implementation = implementation
    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0.0, 0.05)
    return block


def padded_dispatch(block, hidden_states: torch.Tensor) -> torch.Tensor:
    """Candidate (b): static shapes for a given token count (see the module docstring)."""
    batch, seq, hidden = hidden_states.shape
    flat = hidden_states.reshape(-1, hidden)
    _, weights, index = block.gate(flat)
    gate_up, down = block.experts.gate_up_proj, block.experts.down_proj
    num_experts, top_k = gate_up.shape[0], index.shape[1]
    num_tokens = flat.shape[0]
    slots = num_tokens * top_k
    size = -(-slots // num_experts)  # rows per block
    num_blocks = min(slots, (slots + num_experts * (size - 1)) // size)  # static bound
    experts = torch.arange(num_experts)
    expert_of = index.reshape(-1)  # [slots]
    order = torch.sort(expert_of, stable=True).indices
    sorted_expert = expert_of[order]
    counts = (expert_of.unsqueeze(1) == experts).sum(dim=0)  # [experts]
    padded = (counts + size - 1) // size * size
    padded_end = torch.cumsum(padded, 0)
    rank = torch.arange(slots) - (torch.cumsum(counts, 0) - counts)[sorted_expert]
    row = (padded_end - padded)[sorted_expert] + rank  # [slots] row of each sorted slot
    rows = flat.new_zeros(num_blocks * size, hidden).index_copy(0, row, flat[order // top_k])
    block_start = torch.arange(num_blocks) * size
    block_expert = torch.searchsorted(padded_end, block_start, right=True).clamp(
        max=num_experts - 1
    )
    x = rows.view(num_blocks, size, hidden)
    g, u = torch.bmm(x, gate_up.index_select(0, block_expert).transpose(1, 2)).chunk(2, dim=-1)
    y = torch.bmm(block.experts.act_fn(g) * u, down.index_select(0, block_expert).transpose(1, 2))
    y = y.reshape(-1, hidden)[row] * weights.reshape(-1)[order].unsqueeze(-1)
    out = torch.zeros_like(y).index_copy(0, order, y).view(num_tokens, top_k, hidden).sum(1)
    return out.reshape(batch, seq, hidden)


def experts_only(block: StaticMoeBlock, method: str, hidden_states: torch.Tensor):
    """`block` with one of its experts' methods forced (`dense` or `gathered`)."""
    batch, seq, hidden = hidden_states.shape
    flat = hidden_states.reshape(-1, hidden)
    _, weights, index = block.gate(flat)
    return getattr(block.experts, method)(flat, index, weights).reshape(batch, seq, hidden)


def time_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", default="1,2,4,16,128,512", help="token counts, comma-separated"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1792)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_host_memory()  # as the engine's CPU backend: no page faults on temporaries
    dims = (args.hidden, args.intermediate, args.experts, args.top_k)
    eager = build_block(*dims, "eager")
    grouped = build_block(*dims, "grouped_mm")
    dense = StaticMoeBlock(build_block(*dims, "eager")).eval()
    variants = {
        "hf eager": eager,
        "hf grouped_mm": grouped,
        "dense (a)": lambda x: experts_only(dense, "dense", x),
        "padded (b)": lambda x: padded_dispatch(eager, x),
        "engine": dense,
    }
    print(f"ms per call (best of {args.repeats}), fp32, {args.threads} thread(s), {dims=}")
    print(f"{'tokens':>6}" + "".join(f"{name:>15}" for name in variants))
    for num_tokens in [int(t) for t in args.tokens.split(",")]:
        x = torch.randn(1, num_tokens, args.hidden, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            reference = eager(x)
            cells = []
            for fn in variants.values():
                torch.testing.assert_close(fn(x), reference, rtol=1e-4, atol=1e-5)
                cells.append(time_ms(lambda fn=fn, x=x: fn(x), args.repeats))
        print(f"{num_tokens:>6}" + "".join(f"{ms:>15.2f}" for ms in cells))


if __name__ == "__main__":
    main()
