"""`gaudi-serve plan`: pick the tensor-parallel degree and KV capacity for a model.

One model and one card print a report: every power-of-two degree with its weights, workspace
and KV cache per card, the chosen degree, and why each smaller one was rejected. Several
models or cards print one Markdown table (model x card). Exit codes: 0 when a plan fits
(for a table: always), 1 when the model does not fit on one node, 2 on bad input (unknown
card or dtype, a refused --tp, a missing config.json).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sharding.planner import Plan

__all__ = ["add_arguments", "run"]

EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sharding.hardware import CARD_CHOICES, DTYPE_CHOICES
    from sharding.planner import plan

    # the planner's own defaults: one home for them
    default = {
        name: param.default
        for name, param in inspect.signature(plan).parameters.items()
        if param.default is not inspect.Parameter.empty
    }
    parser.add_argument(
        "--model",
        nargs="+",
        default=None,
        help="config.json or model directory (several for a table); default: the bundled model",
    )
    parser.add_argument(
        "--card",
        nargs="+",
        default=["gaudi2"],
        help=f"card type(s), from {list(CARD_CHOICES)} (default: gaudi2)",
    )
    parser.add_argument(
        "--dtype", default=default["dtype"], help=f"weights, from {list(DTYPE_CHOICES)}"
    )
    parser.add_argument(
        "--kv-cache-dtype", default=None, help="default: bfloat16 for fp8 weights, else --dtype"
    )
    parser.add_argument(
        "--quantization",
        choices=["int8", "int4", "fp8"],
        default=None,
        help="the engine's weight quantization (a model's `quantization`); default: none",
    )
    parser.add_argument(
        "--max-model-len", type=int, default=default["max_model_len"], help="tokens per sequence"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=default["concurrency"],
        help="sequences at max-model-len held at once",
    )
    parser.add_argument("--tp", type=int, default=None, help="evaluate this TP degree")
    parser.add_argument(
        "--cpu-memory-gb", type=float, default=None, help="host memory for --card cpu, in GB"
    )
    parser.add_argument("--memory-utilization", type=float, default=default["memory_utilization"])
    parser.add_argument("--cards-per-node", type=int, default=default["cards_per_node"])
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=default["max_num_batched_tokens"],
        help="prefill tokens per step",
    )
    parser.add_argument("--json", action="store_true", help="print the plan(s) as JSON")


def run(args: argparse.Namespace) -> int:
    from sharding.hardware import get_card
    from sharding.planner import ModelSpec, plan

    try:
        models = [ModelSpec.from_path(path) for path in args.model or [_default_model_path()]]
        cards = [get_card(name, cpu_memory_gb=args.cpu_memory_gb) for name in args.card]
        plans = [
            plan(
                model,
                card,
                dtype=args.dtype,
                kv_cache_dtype=args.kv_cache_dtype,
                max_model_len=args.max_model_len,
                concurrency=args.concurrency,
                tp_size=args.tp,
                memory_utilization=args.memory_utilization,
                cards_per_node=args.cards_per_node,
                max_num_batched_tokens=args.max_num_batched_tokens,
                quantization=args.quantization,
            )
            for model in models
            for card in cards
        ]
    except (ValueError, FileNotFoundError) as error:
        print(f"gaudi-serve plan: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        payload = [p.to_dict() for p in plans]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    elif len(plans) == 1:
        print(format_report(plans[0]))
    else:
        print(format_table(plans, [m.name for m in models], [c.name for c in cards]))
    if len(plans) == 1 and not plans[0].is_fit:
        return EXIT_DOES_NOT_FIT
    return 0


def _default_model_path() -> str:
    from cluster.env import models_dir
    from engine.assets import default_model_path

    return str(default_model_path(None, models_dir()))


def _gib(num_bytes: int | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes / 2**30:.1f} GiB"


def format_report(result: Plan) -> str:
    """The detailed report for one model on one card."""
    model, card = result.model, result.card
    lines = [
        f"model  {model.name}: {model.num_params / 1e9:.2f} B params, {model.num_layers} layers, "
        f"{model.num_attention_heads} heads / {model.num_kv_heads} KV heads x {model.head_dim}",
        f"card   {card.name}: {card.description} (planned as {card.memory_gib:.1f} GiB), "
        + (
            "one host shared by all ranks"
            if card.is_host_memory
            else f"{result.cards_per_node} per node"
        ),
        f"target {result.concurrency} x {result.max_model_len:,} tokens = "
        f"{result.num_tokens_needed:,} KV tokens; weights {result.dtype}"
        + (f" ({result.quantization} quantized)" if result.quantization else "")
        + ", KV "
        f"{result.kv_cache_dtype}; memory_utilization {result.memory_utilization:.2f}",
        "",
        f"{'tp':>3}  {'weights/card':>12}  {'workspace':>10}  {'KV/token':>9}  "
        f"{'KV tokens':>10}  verdict",
    ]
    for c in result.candidates:
        kv_token = c.kv_bytes_per_token_per_card
        lines.append(
            f"{c.tp_size:>3}  {_gib(c.weight_bytes_per_card):>12}  "
            f"{_gib(c.workspace_bytes_per_card):>10}  "
            f"{'-' if kv_token is None else f'{kv_token / 1024:g} KiB':>9}  "
            f"{'-' if c.kv_capacity_tokens is None else f'{c.kv_capacity_tokens:,}':>10}  "
            f"{c.verdict.value}{'  <- chosen' if c.tp_size == result.tp_size else ''}"
        )
    lines += ["", f"plan: {result.summary}"]
    if result.rejected:
        lines.append("why not a smaller degree:" if result.is_fit else "why no degree fits:")
        lines += [f"  tp {c.tp_size}: {c.reason}" for c in result.rejected]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def format_table(plans: list[Plan], model_names: list[str], card_names: list[str]) -> str:
    """A Markdown table, one row per model, one column per card: tp, weights/card, KV."""
    by_key = {(p.model.name, p.card.name): p for p in plans}
    header = ["model", "params", *card_names]
    rows = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    for name in model_names:
        cells = [name, f"{by_key[name, card_names[0]].model.num_params / 1e9:.1f} B"]
        for card in card_names:
            p = by_key[name, card]
            chosen = p.chosen
            if p.is_fit and chosen is not None:
                cells.append(
                    f"tp {p.tp_size}: {_gib(chosen.weight_bytes_per_card)}, "
                    f"{chosen.kv_capacity_tokens:,} tok"
                )
            else:
                cells.append(
                    f"does not fit on {p.cards_per_node} cards" if p.tp_size is None else "no fit"
                )
        rows.append(f"| {' | '.join(cells)} |")
    return "\n".join(rows)
