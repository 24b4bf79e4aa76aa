"""FP8 on Gaudi through Intel Neural Compressor, the way Intel documents it for Gaudi
(INC's "FP8 Quantization" guide; optimum-habana and vllm-gaudi do the same):

1. measurement, once per model (`gaudi-serve quantize --model PATH --out DIR`):
   `prepare(model, FP8Config(mode="MEASURE", observer="maxabs", dump_stats_path=...))`,
   run calibration prompts through the model, `finalize_calibration(model)`: INC writes
   each Linear's input/weight ranges under DIR (files named after dump_stats_path);
2. serving (`quantization: fp8` with `quantization_stats: DIR`):
   `convert(model, FP8Config(mode="QUANTIZE", scale_method="maxabs_hw", same path))`
   swaps the Linears (DeepSpeed's LinearLayer/LinearAllreduce under TP too) for INC's FP8
   modules with scales from those statistics.

The lm_head stays in bfloat16 (as the planner assumes for fp8). INC's FP8 modules need
the Gaudi software stack; tests check the calls and the configs INC receives
(tests/engine/quant/test_inc_fp8.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

STATS_PREFIX = "measure"  # INC names its statistics files <dump_stats_path>_*
OBSERVER = "maxabs"
SCALE_METHOD = "maxabs_hw"  # per-tensor scales rounded to the powers Gaudi's FP8 units take
BLOCKLIST = {"names": ["lm_head"], "types": []}


def measure_config(stats_dir: str | Path):
    """The FP8Config of the measurement pass, writing statistics under stats_dir."""
    from neural_compressor.torch.quantization import FP8Config

    return FP8Config(
        mode="MEASURE",
        observer=OBSERVER,
        dump_stats_path=str(Path(stats_dir) / STATS_PREFIX),
        blocklist=BLOCKLIST,
    )


def quantize_config(stats_dir: str | Path):
    """The FP8Config of the serving pass, reading the statistics under stats_dir."""
    from neural_compressor.torch.quantization import FP8Config

    return FP8Config(
        mode="QUANTIZE",
        observer=OBSERVER,
        scale_method=SCALE_METHOD,
        dump_stats_path=str(Path(stats_dir) / STATS_PREFIX),
        blocklist=BLOCKLIST,
    )


def measure(model: nn.Module, batches: Iterable[torch.Tensor], stats_dir: str | Path) -> int:
    """Run the measurement: every batch (input_ids [batch, tokens] on the model's device)
    goes through the observed model once; INC writes the statistics. Returns the number
    of batches run."""
    from neural_compressor.torch.quantization import finalize_calibration, prepare

    Path(stats_dir).mkdir(parents=True, exist_ok=True)
    model = prepare(model, measure_config(stats_dir))
    num_batches = 0
    with torch.no_grad():
        for input_ids in batches:
            model(input_ids=input_ids)
            num_batches += 1
    if num_batches == 0:
        raise ValueError("the FP8 measurement needs at least one calibration prompt, got none")
    finalize_calibration(model)
    return num_batches


def quantize_fp8_inc(model: nn.Module, stats_dir: str | Path | None) -> nn.Module:
    """The model with INC's FP8 modules, scaled from the statistics under stats_dir."""
    if stats_dir is None:
        raise ValueError(
            "quantization 'fp8' on hpu needs quantization_stats: the directory "
            "`gaudi-serve quantize --model PATH --out DIR` wrote (DIR)"
        )
    path = Path(stats_dir)
    if not any(path.glob(f"{STATS_PREFIX}*")):
        raise FileNotFoundError(
            f"quantization_stats {str(stats_dir)!r} holds no INC measurement ({STATS_PREFIX}* "
            "files); run `gaudi-serve quantize --model PATH --out DIR` on a Gaudi first"
        )
    from neural_compressor.torch.quantization import convert

    return convert(model, quantize_config(path))


def measure_model(
    model_path: str | Path | None,
    out_dir: str | Path,
    prompts: list[str],
    device_name: str = "hpu",
    max_prompt_tokens: int = 1024,
) -> int:
    """`gaudi-serve quantize`: load the model in bfloat16 on the device, run `prompts`
    through INC's measurement, write the statistics into out_dir (then serve with
    `quantization: fp8, quantization_stats: out_dir`). Returns the prompts run."""
    from engine.devices import get_device
    from engine.loader import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(model_path)
    device = get_device(device_name)
    model = load_model(path, torch.bfloat16, device.torch_device)
    # plain forwards over whole prompts: no paged KV cache behind them
    model.set_attn_implementation("sdpa")
    tokenizer = load_tokenizer(path)
    batches = (
        tokenizer(prompt, return_tensors="pt")
        .input_ids[:, :max_prompt_tokens]
        .to(device.torch_device)
        for prompt in prompts
    )
    return measure(model, batches, out_dir)
