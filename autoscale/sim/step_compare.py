"""The analytic step-time model against published throughput figures (SIMULATOR.md):
`python -m autoscale.sim.step_models --compare` prints the table.

Each published run becomes its simulated equivalent: `num_cards / tp` replicas of the
model at TP `tp`, each holding `batch` sequences of `isl` prompt and `osl` output tokens
(the published batch where the source gives one; otherwise as many as the planner's KV
cache holds at isl + osl tokens each). A replica's offline throughput is one wave of
those sequences, as continuous batching of equal requests runs them:

    prefill: ceil(batch / rows) steps of `rows = budget // isl` whole prompts each
    decode:  osl - 1 steps of `batch` rows, the context growing from isl to isl + osl
    tok/s  = replicas x batch x osl / (prefill seconds + decode seconds)

with eager (unpadded) steps and the card family's one set of efficiency factors
(autoscale.sim.card_perf); nothing is tuned per row. A server-scenario figure is compared
with the same offline capacity (the server's latency bounds can only lower it).
"""

from __future__ import annotations

import argparse
import math
from typing import NamedTuple

from autoscale.sim.step_analytic import AnalyticStepCost
from autoscale.sim.step_cost import DECODE, PREFILL, StepWork
from sharding.model_spec import ModelSpec
from sharding.planner import plan

__all__ = ["PUBLISHED", "PublishedRun", "compare_rows", "format_table", "offline_tok_s"]

PREFILL_BUDGET_TOKENS = 8192  # prefill tokens per step of the simulated replicas

_LLAMA_2 = {"model_type": "llama", "vocab_size": 32000, "tie_word_embeddings": False}
_LLAMA_3_1 = {"model_type": "llama", "vocab_size": 128256, "tie_word_embeddings": False}
# Published dimensions (each model's config.json on the Hugging Face Hub).
MODELS: dict[str, dict | ModelSpec] = {
    "Llama-2-13B": {
        **_LLAMA_2,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "num_hidden_layers": 40,
    },
    "Llama-2-70B": {
        **_LLAMA_2,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "num_hidden_layers": 80,
    },
    "Llama-3.1-8B": {
        **_LLAMA_3_1,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 32,
    },
    "Llama-3.1-70B": {
        **_LLAMA_3_1,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "num_hidden_layers": 80,
    },
    # GPT-J's MLP is two matrices (fc_in, fc_out) of 4 x hidden: not a Llama config.
    "GPT-J-6B": ModelSpec(
        name="GPT-J-6B",
        model_type="gptj",
        num_layers=28,
        hidden_size=4096,
        num_attention_heads=16,
        num_kv_heads=16,
        head_dim=256,
        intermediate_size=16384,
        vocab_size=50400,
        is_tied_embeddings=False,
        is_gated_mlp=False,
    ),
}

_MLPERF_V40 = "MLPerf Inference v4.0 (MLCommons results, Intel submission)"
_INTEL_G3 = "https://intel.com/content/www/us/en/developer/platform/gaudi/model-performance.html"
_INTEL_G2 = (
    "https://intel.com/content/www/us/en/developer/platform/gaudi/"
    "model-performance-gaudi2-inference.html"
)
_TRTLLM_H200 = "github.com/NVIDIA/TensorRT-LLM docs/source/blogs/H200launch.md (v0.5.0)"
_TRTLLM_H100 = "https://nvidia.github.io/TensorRT-LLM/blogs/H100vsA100.html (v0.5.0)"


class PublishedRun(NamedTuple):
    """One published throughput figure (output tokens/s over all its cards)."""

    label: str
    source: str
    model: str  # a key of MODELS
    card: str
    dtype: str
    num_cards: int
    tp: int
    isl: int
    osl: int
    batch: int | None  # per replica; None: as many as the KV cache holds
    published_tok_s: float


# MLPerf's Llama-2-70B set (OpenOrca) has variable lengths; its means are not in the cited
# sources: 294 / 294 tokens is an assumption, and so is TP 2 (the submission ran 8 cards).
PUBLISHED: tuple[PublishedRun, ...] = (
    PublishedRun("MLPerf v4.0 server", _MLPERF_V40, "Llama-2-70B", "gaudi2", "fp8", 8, 2,
                 294, 294, None, 6287.0),
    PublishedRun("MLPerf v4.0 offline", _MLPERF_V40, "Llama-2-70B", "gaudi2", "fp8", 8, 2,
                 294, 294, None, 8035.0),
    PublishedRun("Intel, Gaudi3", _INTEL_G3, "Llama-3.1-8B", "gaudi3", "fp8", 1, 1,
                 128, 128, 1536, 24310.0),
    PublishedRun("Intel, Gaudi3", _INTEL_G3, "Llama-3.1-70B", "gaudi3", "fp8", 8, 8,
                 128, 128, 4000, 15008.0),
    PublishedRun("Intel, Gaudi2", _INTEL_G2, "Llama-3.1-8B", "gaudi2", "fp8", 1, 1,
                 128, 128, 2429, 18201.0),
    PublishedRun("Intel, Gaudi2", _INTEL_G2, "Llama-2-70B", "gaudi2", "fp8", 2, 2,
                 128, 128, 1750, 2844.0),
    PublishedRun("TensorRT-LLM, H200", _TRTLLM_H200, "Llama-2-70B", "h200", "fp8", 1, 1,
                 128, 128, 512, 3014.0),
    PublishedRun("TensorRT-LLM, H200", _TRTLLM_H200, "Llama-2-13B", "h200", "fp8", 1, 1,
                 128, 128, 1024, 11819.0),
    PublishedRun("TensorRT-LLM, H100", _TRTLLM_H100, "GPT-J-6B", "h100", "fp8", 1, 1,
                 128, 128, 64, 10907.0),
)  # fmt: skip


def offline_tok_s(
    cost: AnalyticStepCost, isl: int, osl: int, batch: int, budget: int = PREFILL_BUDGET_TOKENS
) -> float:
    """Output tokens/s of one replica running waves of `batch` equal requests."""
    rows = max(1, min(batch, budget // isl))
    prefill_s = 0.0
    for start in range(0, batch, rows):
        n = min(rows, batch - start)
        prefill_s += cost.step_s(StepWork(PREFILL, n, n * isl, 0, None))
    decode_s = sum(
        cost.step_s(StepWork(DECODE, batch, batch, batch * (isl + k), None)) for k in range(osl - 1)
    )
    return batch * osl / (prefill_s + decode_s)


def kv_batch(run: PublishedRun) -> int:
    """Sequences of isl + osl tokens the planner's KV cache holds per replica."""
    result = plan(
        _spec(run.model), run.card, dtype=run.dtype, max_model_len=run.isl + run.osl,
        tp_size=run.tp,
    )  # fmt: skip
    candidate = next(c for c in result.candidates if c.tp_size == run.tp)
    if not candidate.kv_capacity_tokens:
        raise ValueError(f"{run.model} at tp {run.tp} leaves no KV cache on {run.card}")
    return candidate.kv_capacity_tokens // (run.isl + run.osl)


def _spec(model: str) -> ModelSpec:
    config = MODELS[model]
    return config if isinstance(config, ModelSpec) else ModelSpec.from_config(config, name=model)


class CompareRow(NamedTuple):
    run: PublishedRun
    batch: int
    predicted_tok_s: float

    @property
    def error(self) -> float:
        """predicted / published - 1."""
        return self.predicted_tok_s / self.run.published_tok_s - 1


def compare_rows(runs: tuple[PublishedRun, ...] = PUBLISHED) -> list[CompareRow]:
    rows = []
    for run in runs:
        cost = AnalyticStepCost(_spec(run.model), _card(run.card), tp_size=run.tp, dtype=run.dtype)
        batch = run.batch if run.batch is not None else kv_batch(run)
        replicas = run.num_cards // run.tp
        rows.append(CompareRow(run, batch, replicas * offline_tok_s(cost, run.isl, run.osl, batch)))
    return rows


def _card(name: str):
    from autoscale.sim.card_perf import get_card_perf

    return get_card_perf(name)


def format_table(rows: list[CompareRow]) -> str:
    lines = [
        "| figure | model | cards | dtype | sim: replicas x TP, batch, in/out | published tok/s "
        "| predicted tok/s | error |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        r = row.run
        lines.append(
            f"| {r.label} | {r.model} | {r.num_cards} x {r.card} | {r.dtype} "
            f"| {r.num_cards // r.tp} x TP{r.tp}, {row.batch}, {r.isl}/{r.osl} "
            f"| {r.published_tok_s:,.0f} | {row.predicted_tok_s:,.0f} | {row.error:+.0%} |"
        )
    errors = [abs(row.error) for row in rows]
    lines.append("")
    lines.append(
        f"mean |error| {sum(errors) / len(errors):.0%}, "
        f"geometric mean ratio {math.exp(sum(math.log(1 + r.error) for r in rows) / len(rows)):.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoscale.sim.step_models")
    parser.add_argument(
        "--compare", action="store_true", help="the analytic model against published figures"
    )
    args = parser.parse_args(argv)
    if not args.compare:
        parser.print_help()
        return 2
    print(format_table(compare_rows()))
    for source in dict.fromkeys(r.source for r in PUBLISHED):
        print(f"source: {source}")
    return 0
