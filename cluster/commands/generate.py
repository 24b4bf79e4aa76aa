"""`gaudi-serve generate PROMPT`: offline generation with the engine (no Ray, no server)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="+", help="prompt text (several prompts batch together)")
    parser.add_argument(
        "--model", default=None, help="model directory (default: SmolLM2 if prepared, else pycoder)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | hpu")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")


def run(args: argparse.Namespace) -> int:
    from cluster.env import models_dir
    from engine import LLM, SamplingParams, default_model_path
    from sharding.factory import create_executor

    try:
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            stop=args.stop,
        )
        llm = LLM(
            args.model or default_model_path(None, models_dir()),
            executor_factory=create_executor,
            device=args.device,
            dtype=args.dtype,
            tp_size=args.tp,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"gaudi-serve generate: {exc}", file=sys.stderr)
        return 2
    try:
        for out in llm.generate(args.prompt, params):
            sys.stdout.write(out.prompt + out.text + "\n")
            if len(args.prompt) > 1:
                sys.stdout.write(f"--- finish_reason={out.finish_reason}\n")
    finally:
        llm.shutdown()
    return 0
