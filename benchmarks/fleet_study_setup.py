"""What the fleet study (benchmarks/fleet_study.py) simulates: the models' config.json
files, the planner's deployment of each model on each card, the trace, a first guess of
the replicas a rate needs, and the search for the smallest fleet that meets the SLO.

Everything here is pure or writes only the config files it is asked to; the simulations
run in benchmarks/fleet_study.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from autoscale.sim.step_cost import DECODE, PREFILL, StepCost, StepWork
from autoscale.sim.synth import LogNormal, PrefixGroups, SynthSpec, synthesize
from autoscale.sim.trace import TraceRequest
from sharding.planner import plan

__all__ = [
    "CARDS",
    "MAX_MODEL_LEN",
    "MAX_NUM_SEQS",
    "MODELS",
    "PLAN_CONCURRENCY",
    "Deployment",
    "StudyModel",
    "choose_deployment",
    "estimate_replicas",
    "llama_config",
    "smallest_passing",
    "study_trace",
    "trace_spec",
    "write_model_config",
]

CARDS = ("gaudi2", "gaudi3", "h100", "h200")
CARDS_PER_NODE = 8
MAX_MODEL_LEN = 8192
MAX_NUM_SEQS = 64  # rows per step (and Serve's max_ongoing_requests, its default 64)
# The planner's concurrency: KV for 16 full-length (8,192-token) sequences, 131k tokens,
# about 100 of the trace's mean ~1,250-token conversations: room for a full batch.
PLAN_CONCURRENCY = 16

# The trace: a chat workload. Prompt lengths are drawn AFTER the shared prefix (synth's
# rule), so the mean prompt is 800 + 0.5 x 384 = ~990 tokens.
PROMPT = LogNormal(800.0, 1.0, 16, 6144)
OUTPUT = LogNormal(250.0, 1.0, 4, 2000)
PREFIX = PrefixGroups(num_groups=16, prefix_tokens=384, fraction=0.5, popularity="zipf")
ARRIVAL_CV = 2.0


def llama_config(
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    vocab_size: int = 128256,
    max_position_embeddings: int = 131072,
) -> dict[str, Any]:
    """A Llama-3.1 config.json (the fields that size the model) from its published
    dimensions; no download."""
    for name, value in (
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("num_kv_heads", num_kv_heads),
        ("intermediate_size", intermediate_size),
        ("vocab_size", vocab_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_heads % num_kv_heads or hidden_size % num_heads:
        raise ValueError(
            f"num_heads ({num_heads}) must divide hidden_size ({hidden_size}) and be a "
            f"multiple of num_kv_heads ({num_kv_heads})"
        )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": vocab_size,
    }


@dataclass(frozen=True)
class StudyModel:
    """One model of the study and what the study asks of it."""

    name: str
    config: dict[str, Any]
    rate: float  # mean requests/s of its trace
    slo_ttft_s: float  # p95 targets, also the slo autoscaler's
    slo_tpot_s: float
    startup_s: float  # a new replica's load + warm-up


MODELS: dict[str, StudyModel] = {
    m.name: m
    for m in (
        # startup: Ray measured 126-360 s from zero for 70B TP4 ([fleet]); 180 s is a warm
        # node (weights in the page cache, recipe cache hot), not the cold worst case.
        StudyModel("Llama-3.1-70B", llama_config(8192, 80, 64, 8, 28672), 8.0, 2.0, 0.100, 180.0),
        # 405B: 5.8x the weights per node (one replica per node) and 126 layers to warm up
        # (8B: 23-66 s for 32 layers with the recipe cache): 480 s.
        StudyModel(
            "Llama-3.1-405B", llama_config(16384, 126, 128, 8, 53248), 3.0, 4.0, 0.150, 480.0
        ),
    )
}


def write_model_config(root: str | Path, model: StudyModel) -> Path:
    """Write root/<model name>/config.json; returns the folder."""
    folder = Path(root) / model.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
    return folder


class Deployment(NamedTuple):
    """How one replica of a model runs on a card, as the planner decides."""

    card: str
    dtype: str
    tp_size: int
    kv_cache_tokens: int
    replicas_per_node: int
    note: str  # why this dtype (fp8 only where bfloat16 does not fit a node)


def choose_deployment(
    config: dict[str, Any],
    card: str,
    max_model_len: int = MAX_MODEL_LEN,
    concurrency: int = PLAN_CONCURRENCY,
) -> Deployment:
    """The planner's TP degree and KV cache for `config` on `card`: bfloat16 when it fits a
    node, else fp8 weights (bf16 KV cache). ValueError when neither fits."""
    bf16 = plan(config, card, "bfloat16", max_model_len=max_model_len, concurrency=concurrency)
    chosen, note = bf16, "bfloat16 fits"
    if not bf16.is_fit:
        chosen = plan(config, card, "fp8", max_model_len=max_model_len, concurrency=concurrency)
        note = f"fp8: bfloat16 {bf16.summary}"
        if not chosen.is_fit:
            raise ValueError(f"{card}: neither bfloat16 nor fp8 fits a node: {chosen.summary}")
    return Deployment(
        card,
        chosen.dtype,
        chosen.tp_size,
        chosen.chosen.kv_capacity_tokens,
        chosen.num_replicas_per_node,
        note,
    )


def trace_spec(rate: float, duration_s: float, seed: int = 0) -> SynthSpec:
    """The study's bursty chat trace (module constants) at `rate` requests/s."""
    return SynthSpec(
        "bursty",
        rate,
        duration_s,
        seed=seed,
        cv=ARRIVAL_CV,
        prompt=PROMPT,
        output=OUTPUT,
        prefix=PREFIX,
    )


def study_trace(rate: float, duration_s: float, seed: int = 0) -> list[TraceRequest]:
    return synthesize(trace_spec(rate, duration_s, seed))


def estimate_replicas(
    cost: StepCost,
    rate: float,
    prompt_tokens: float,
    output_tokens: float,
    slo_tpot_s: float,
    max_num_seqs: int = MAX_NUM_SEQS,
    chunk_tokens: int = 2048,
    max_replicas: int = 64,
) -> int:
    """A first guess (no simulation) of the replicas that serve `rate` requests/s of mean
    prompt_tokens in / output_tokens out within slo_tpot_s: per replica, prefill takes a
    share `busy` of the time (decode stalls meanwhile), the batch follows Little's law
    (rows = rate x output_tokens x tpot) and tpot = decode_step(rows) / (1 - busy); the
    smallest count whose tpot is within 80% of the target. max_replicas when none is.

    Worked example: 8 req/s, prefill 0.2 s a request, decode 50 ms a step: 2 replicas
    are 80% busy prefilling (tpot 250 ms), 4 are 40% busy (tpot ~85 ms at ~33 rows)."""
    prefill_s, done = 0.0, 0
    while done < prompt_tokens:
        q = int(min(chunk_tokens, math.ceil(prompt_tokens - done)))
        prefill_s += cost.step_s(StepWork(PREFILL, 1, q, done, None))
        done += q
    context = int(prompt_tokens + output_tokens / 2)
    for n in range(1, max_replicas + 1):
        per_replica = rate / n
        busy = per_replica * prefill_s
        if busy >= 0.9:
            continue
        rows, tpot = 1.0, 0.0
        for _ in range(30):
            r = max(1, min(max_num_seqs, round(rows)))
            tpot = cost.step_s(StepWork(DECODE, r, r, r * context, None)) / (1.0 - busy)
            rows = per_replica * output_tokens * tpot
        if tpot <= 0.8 * slo_tpot_s and rows <= max_num_seqs / 2:
            return n
    return max_replicas


def smallest_passing(
    passes: Callable[[int], bool], start: int, low: int, high: int
) -> tuple[int | None, list[int]]:
    """The smallest n in [low, high] with passes(n), for a `passes` that is monotone (False
    then True); None when passes(high) is False. Starts at `start` and gallops (1, 2, 4,
    ... away) to bracket the answer, then bisects, so a good start costs few calls.
    Returns (n, the counts tried, in order)."""
    if not low <= high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    tried: list[int] = []
    seen: dict[int, bool] = {}

    def check(n: int) -> bool:
        if n not in seen:
            seen[n] = passes(n)
            tried.append(n)
        return seen[n]

    n = min(max(start, low), high)
    step = 1
    if check(n):
        good, bad = n, low - 1
        while good > low:
            probe = max(low, good - step)
            if not check(probe):
                bad = probe
                break
            good, step = probe, step * 2
    else:
        bad, good = n, None
        while bad < high:
            probe = min(high, bad + step)
            if check(probe):
                good = probe
                break
            bad, step = probe, step * 2
        if good is None:
            return None, tried
    while good - bad > 1:
        mid = (good + bad) // 2
        if check(mid):
            good = mid
        else:
            bad = mid
    return good, tried
