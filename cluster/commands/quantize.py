"""`gaudi-serve quantize --model PATH --out DIR`: the FP8 measurement for Gaudi.

Runs calibration prompts through the model with Intel Neural Compressor observing every
Linear (engine.quant.inc_fp8) and writes its statistics into DIR. Serve the model with
`quantization: fp8` and `quantization_stats: DIR`. int8/int4 need no measurement.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (with config.json)")
    parser.add_argument("--out", required=True, help="directory for INC's statistics")
    parser.add_argument(
        "--prompts",
        default=None,
        help="calibration prompts, one per line (default: a built-in varied set of 16)",
    )
    parser.add_argument("--device", default="hpu", help="hpu (the measurement is for Gaudi's FP8)")
    parser.add_argument(
        "--max-prompt-tokens", type=int, default=1024, help="prompts are cut to this length"
    )


def run(args: argparse.Namespace) -> int:
    if args.device != "hpu":
        print(
            f"gaudi-serve quantize: --device must be 'hpu', got {args.device!r}: the "
            "measurement feeds Intel Neural Compressor's FP8 on Gaudi. fp8 on cuda and "
            "int8/int4 on cpu or cuda need none: set quantization in the config instead",
            file=sys.stderr,
        )
        return 2
    from engine.quant.calibration import CALIBRATION_PROMPTS, read_prompts
    from engine.quant.inc_fp8 import measure_model

    try:
        prompts = read_prompts(args.prompts) if args.prompts else list(CALIBRATION_PROMPTS)
        num_prompts = measure_model(
            args.model, args.out, prompts, args.device, args.max_prompt_tokens
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"gaudi-serve quantize: {exc}", file=sys.stderr)
        return 2
    print(
        f"measured {num_prompts} prompts; statistics in {args.out}. Serve with "
        f"quantization: fp8 and quantization_stats: {args.out}"
    )
    return 0
