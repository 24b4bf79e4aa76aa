"""The tensor-parallel planner: from a model's config.json and a card type to a TP degree.

Everything is arithmetic on the config's dimensions; no weights are read. For each TP degree
``tp`` (powers of two up to ``cards_per_node``) one card holds, in bytes:

    budget    = memory_utilization * card memory          (host memory: also / tp, see below)
    weights   = (block_linear_params * num_bytes + embedding_params * unquantized_bytes) / tp
    workspace = max_num_batched_tokens * act_bytes * (2 * hidden + 3 * ffn_per_token / tp)
                + concurrency * vocab * 4
    KV cache  = budget - weights - workspace
    KV/token  = 2 (K and V) * num_layers * (num_kv_heads / tp) * head_dim * kv_bytes

``num_bytes`` and ``unquantized_bytes`` come from sharding.hardware.DTYPES (fp8 quantizes
only the block linears); act_bytes is the unquantized size. With a weight ``quantization``
(the engine's option: fp8, int8, int4) the weights are engine.quant.schemes.weight_bytes
instead: fp8 one byte per block-linear weight, the embeddings in ``dtype``; int8/int4 1.125
/ 0.625 bytes per weight (a float32 scale per 32) for every matrix, the embeddings too, as
the engine quantizes them. Workspace is the activation
peak of one prefill step: the residual stream and its normed
copy (2 * hidden per token, replicated on every rank) plus the MLP's gate, up and product
(3 * intermediate per token, sharded; for MoE ``ffn_per_token`` is experts_per_tok *
intermediate), plus fp32 logits for ``concurrency`` rows. What it leaves out (graph and
allocator overhead, communication buffers, the gap between marketed and reported memory) is
what ``memory_utilization`` (0.9 by default, as in vLLM) keeps free. Norms, biases and MoE
routers are not counted (under 0.01% of parameters in every model in the tests).

A degree is valid when the engine's tensor parallelism runs the model's family
(engine.families: is_tp_supported; otherwise only 1) and it is a power of two no larger
than cards_per_node that divides num_key_value_heads (and so num_attention_heads, a
multiple of it). KV heads are never replicated: DeepSpeed AutoTP, which shards the model
here, gives ranks beyond num_kv_heads zero KV heads
(deepspeed.module_inject.tp_shard.get_shard_size) instead of the copies vLLM would make.
The planner picks the smallest valid degree whose KV cache holds
concurrency * max_model_len tokens, so every sequence can reach max_model_len at once.

On ``cpu`` all ranks of a node share one host memory: a degree-tp group gets 1/tp of it per
rank, TP never adds memory, and one replica fills the node.

Worked example (Llama-3.1-70B, bfloat16, gaudi2 = 96 GiB, max_model_len 8192, concurrency 1):
70.55e9 params * 2 B = 131.4 GiB of weights > 86.4 GiB budget, so tp 1 is rejected; at tp 2
each card holds 65.7 GiB of weights and 20.5 GiB of KV cache at 160 KiB per token
(2 * 80 layers * 4 KV heads * 128 * 2 B), about 134,000 tokens: tp 2, 4 replicas per node.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from engine.config import QUANTIZATION_CHOICES, EngineConfig
from engine.families import FAMILIES, MULTIMODAL_FAMILIES
from engine.quant.schemes import weight_bytes as quantized_weight_bytes
from sharding.hardware import CardSpec, GiB, get_card, get_dtype
from sharding.model_spec import ModelSpec

__all__ = [
    "Candidate",
    "ModelSpec",
    "Plan",
    "Verdict",
    "plan",
    "runs_tp",
    "valid_tp_sizes",
]

LOGITS_BYTES = 4  # sampling reads fp32 logits
# The prefill token budget of one step: the engine's default unless the caller plans another.
DEFAULT_MAX_NUM_BATCHED_TOKENS = EngineConfig.__dataclass_fields__["max_num_batched_tokens"].default


class Verdict(str, Enum):
    FITS = "fits"
    INVALID_HEADS = "invalid degree"
    WEIGHTS_DO_NOT_FIT = "weights do not fit"
    KV_DOES_NOT_FIT = "KV cache too small"


@dataclass(frozen=True)
class Candidate:
    """One TP degree, evaluated. Byte counts are per card; None where the degree is invalid."""

    tp_size: int
    verdict: Verdict
    reason: str
    weight_bytes_per_card: int | None = None
    workspace_bytes_per_card: int | None = None
    kv_bytes_per_token_per_card: int | None = None
    kv_capacity_tokens: int | None = None

    @property
    def is_fit(self) -> bool:
        return self.verdict is Verdict.FITS


@dataclass(frozen=True)
class Plan:
    """The planner's answer; ``tp_size`` is None when no degree fits on one node."""

    model: ModelSpec
    card: CardSpec
    dtype: str
    kv_cache_dtype: str
    max_model_len: int
    concurrency: int
    memory_utilization: float
    cards_per_node: int
    max_num_batched_tokens: int
    candidates: tuple[Candidate, ...]
    tp_size: int | None
    is_tp_explicit: bool = False
    quantization: str | None = None

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.tp_size == self.tp_size), None)

    @property
    def is_fit(self) -> bool:
        return self.chosen is not None and self.chosen.is_fit

    @property
    def num_tokens_needed(self) -> int:
        return self.concurrency * self.max_model_len

    @property
    def num_replicas_per_node(self) -> int:
        if not self.is_fit or self.tp_size is None:
            return 0
        return 1 if self.card.is_host_memory else self.cards_per_node // self.tp_size

    @property
    def max_full_length_seqs(self) -> int:
        """Sequences at max_model_len the chosen degree's KV cache holds at once."""
        chosen = self.chosen
        if chosen is None or not chosen.kv_capacity_tokens:
            return 0
        return chosen.kv_capacity_tokens // self.max_model_len

    @property
    def rejected(self) -> tuple[Candidate, ...]:
        """Why each smaller degree (every degree, when none fits) was not chosen."""
        limit = self.tp_size if self.tp_size is not None else math.inf
        return tuple(c for c in self.candidates if c.tp_size < limit and not c.is_fit)

    @property
    def notes(self) -> tuple[str, ...]:
        max_positions = self.model.max_position_embeddings
        if max_positions is not None and self.max_model_len > max_positions:
            return (
                f"max_model_len {self.max_model_len} exceeds the model's "
                f"max_position_embeddings {max_positions}",
            )
        return ()

    @property
    def summary(self) -> str:
        """One line: the decision, or why nothing fits."""
        chosen = self.chosen
        if chosen is not None and chosen.is_fit:
            where = "host" if self.card.is_host_memory else f"{self.cards_per_node}-card node"
            return (
                f"tp {self.tp_size}: {self.num_replicas_per_node} replica(s) per {where}, "
                f"KV cache {chosen.kv_capacity_tokens:,} tokens per replica "
                f"({self.max_full_length_seqs} sequences of {self.max_model_len:,} tokens)"
            )
        if chosen is not None:
            return f"tp {self.tp_size} (requested) does not fit: {chosen.reason}"
        return _no_fit_summary(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the inputs, the model's counts, every candidate and the decision."""
        return {
            **asdict(self),
            "num_params": self.model.num_params,
            "num_tokens_needed": self.num_tokens_needed,
            "is_fit": self.is_fit,
            "num_replicas_per_node": self.num_replicas_per_node,
            "max_full_length_seqs": self.max_full_length_seqs,
            "summary": self.summary,
            "notes": list(self.notes),
        }


def _no_fit_summary(result: Plan) -> str:
    card = result.card
    largest = [c for c in result.candidates if c.verdict is not Verdict.INVALID_HEADS][-1]
    if largest.verdict is Verdict.KV_DOES_NOT_FIT:
        return (
            f"does not fit on one node of {result.cards_per_node} x {card.name}: at tp "
            f"{largest.tp_size} the {largest.reason}; lower concurrency or max_model_len"
        )
    if card.is_host_memory:
        return f"does not fit in {card.description}: {largest.reason}"
    weight_bytes = result.candidates[0].weight_bytes_per_card or 0  # tp 1 is always valid
    min_cards = math.ceil(weight_bytes / (result.memory_utilization * card.memory_bytes))
    return (
        f"does not fit on one node of {result.cards_per_node} x {card.name}: the weights alone "
        f"({weight_bytes / GiB:.1f} GiB) need at least {min_cards} cards at "
        f"memory_utilization {result.memory_utilization:.2f}; use fp8 weights, a card with more "
        f"memory, or several nodes (pipeline parallelism, which this planner does not plan)"
    )


def _powers_of_two(limit: int) -> list[int]:
    return [1 << i for i in range(max(limit, 0).bit_length())]


def runs_tp(model: ModelSpec) -> bool:
    """Whether the engine's tensor parallelism runs the model's family (a multimodal
    model's own, not its text model's); a model_type the engine does not know (a model
    only planned, not served here) is assumed to."""
    model_type = model.family_type or model.model_type
    family = FAMILIES.get(model_type) or MULTIMODAL_FAMILIES.get(model_type)
    return family is None or family.is_tp_supported


def valid_tp_sizes(model: ModelSpec, cards_per_node: int = 8) -> list[int]:
    """Powers of two up to cards_per_node that divide num_kv_heads, or only 1 for a family
    tensor parallelism does not run (see the module docstring)."""
    if not runs_tp(model):
        return [1]
    return [tp for tp in _powers_of_two(cards_per_node) if model.num_kv_heads % tp == 0]


def _invalid_reason(model: ModelSpec, tp: int, cards_per_node: int) -> str | None:
    if tp < 1:
        return f"tp_size={tp} is not >= 1"
    if tp > 1 and not runs_tp(model):
        model_type = model.family_type or model.model_type
        return f"tp_size={tp}: tensor parallelism does not run {model_type} models yet"
    if model.num_kv_heads % tp:
        return f"tp_size={tp} does not divide num_key_value_heads={model.num_kv_heads}"
    if tp & (tp - 1):
        return f"tp_size={tp} is not a power of two"
    if tp > cards_per_node:
        return f"tp_size={tp} exceeds cards_per_node={cards_per_node}"
    return None


def plan(
    model: ModelSpec | str | pathlib.Path | dict[str, Any],
    card: CardSpec | str,
    dtype: str = "bfloat16",
    max_model_len: int = 8192,
    concurrency: int = 1,
    tp_size: int | None = None,
    memory_utilization: float = 0.9,
    cards_per_node: int = 8,
    kv_cache_dtype: str | None = None,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
    quantization: str | None = None,
) -> Plan:
    """Pick the smallest TP degree that holds the weights and concurrency * max_model_len
    tokens of KV cache on one node of ``card``; see the module docstring for the formulas.

    model: a ModelSpec, a config dict, or a path to config.json or a model directory.
    card: a CardSpec or a name from sharding.hardware.CARDS (``cpu`` needs a CardSpec from
        ``get_card("cpu", cpu_memory_gb=...)``).
    kv_cache_dtype: None (or the engine's "auto") = bfloat16 for dtype fp8 (the usual fp8
        recipe), else ``dtype`` (as the engine does with any quantization); "fp8" = the
        engine's FP8 KV cache, one byte an element.
    quantization: the engine's weight quantization (None, fp8, int8, int4); the weights
        are then sized as engine.quant.schemes.weight_bytes says (module docstring).
    tp_size: evaluate this degree instead of choosing; raises ValueError when it is not a
        valid degree (the message lists the valid ones).
    """
    spec = _as_model_spec(model)
    card_spec = card if isinstance(card, CardSpec) else get_card(card)
    get_dtype(dtype)
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(
            f"quantization must be one of {list(QUANTIZATION_CHOICES)}, got {quantization!r}"
        )
    if kv_cache_dtype in (None, "auto"):
        kv_cache_dtype = "bfloat16" if dtype == "fp8" else dtype  # the engine's "auto"
    get_dtype(kv_cache_dtype, field="kv_cache_dtype")
    _check_positive(max_model_len=max_model_len, concurrency=concurrency)
    _check_positive(cards_per_node=cards_per_node, max_num_batched_tokens=max_num_batched_tokens)
    if not 0.0 < memory_utilization <= 1.0:
        raise ValueError(f"memory_utilization must be in (0, 1], got {memory_utilization!r}")
    if tp_size is not None and (reason := _invalid_reason(spec, tp_size, cards_per_node)):
        raise ValueError(
            f"{reason} for {spec.name}; valid tp_size values with cards_per_node="
            f"{cards_per_node}: {valid_tp_sizes(spec, cards_per_node)}"
        )
    settings = dict(
        dtype=dtype,
        kv_cache_dtype=kv_cache_dtype,
        max_model_len=max_model_len,
        concurrency=concurrency,
        memory_utilization=memory_utilization,
        cards_per_node=cards_per_node,
        max_num_batched_tokens=max_num_batched_tokens,
        quantization=quantization,
    )
    candidates = tuple(
        _evaluate(spec, card_spec, tp, **settings) for tp in _powers_of_two(cards_per_node)
    )
    is_tp_explicit = tp_size is not None
    if tp_size is None:
        tp_size = next((c.tp_size for c in candidates if c.is_fit), None)
    return Plan(
        model=spec,
        card=card_spec,
        candidates=candidates,
        tp_size=tp_size,
        is_tp_explicit=is_tp_explicit,
        **settings,
    )


def _evaluate(
    model: ModelSpec,
    card: CardSpec,
    tp: int,
    *,
    dtype: str,
    kv_cache_dtype: str,
    max_model_len: int,
    concurrency: int,
    memory_utilization: float,
    cards_per_node: int,
    max_num_batched_tokens: int,
    quantization: str | None,
) -> Candidate:
    invalid = _invalid_reason(model, tp, cards_per_node)
    if invalid is not None:
        return Candidate(tp, Verdict.INVALID_HEADS, invalid)
    weights = get_dtype(dtype)
    budget = memory_utilization * card.memory_bytes / (tp if card.is_host_memory else 1)
    if quantization is None:
        model_weight_bytes = (
            model.num_block_linear_params * weights.num_bytes
            + model.num_embedding_params * weights.unquantized_bytes
        )
    else:
        model_weight_bytes = quantized_weight_bytes(
            quantization,
            model.num_block_linear_params,
            model.num_embedding_params,
            weights.unquantized_bytes,
        )
    weight_bytes = math.ceil(model_weight_bytes / tp)
    # Activation peak of one prefill step plus the logits (module docstring).
    activation_elems = 2 * model.hidden_size + 3 * model.ffn_per_token // tp
    workspace_bytes = (
        max_num_batched_tokens * weights.unquantized_bytes * activation_elems
        + concurrency * model.vocab_size * LOGITS_BYTES
    )
    kv_elem_bytes = get_dtype(kv_cache_dtype).num_bytes
    kv_per_token = 2 * model.num_layers * (model.num_kv_heads // tp) * model.head_dim
    kv_per_token *= kv_elem_bytes
    sizes = dict(
        weight_bytes_per_card=weight_bytes,
        workspace_bytes_per_card=workspace_bytes,
        kv_bytes_per_token_per_card=kv_per_token,
    )
    free_bytes = budget - weight_bytes - workspace_bytes
    if free_bytes <= 0:
        reason = (
            f"weights {_gib(weight_bytes)} + workspace {_gib(workspace_bytes)} per card exceed "
            f"the {_gib(budget)} budget ({memory_utilization:.2f} x {_gib(card.memory_bytes)}"
            f"{f' / {tp} ranks' if card.is_host_memory and tp > 1 else ''})"
        )
        return Candidate(tp, Verdict.WEIGHTS_DO_NOT_FIT, reason, **sizes)
    capacity = int(free_bytes // kv_per_token)
    needed = concurrency * max_model_len
    if capacity < needed:
        reason = (
            f"KV cache holds {capacity:,} tokens ({_gib(free_bytes)} per card at "
            f"{kv_per_token / 1024:g} KiB per token), the target needs {needed:,} "
            f"(concurrency {concurrency} x max_model_len {max_model_len:,})"
        )
        return Candidate(tp, Verdict.KV_DOES_NOT_FIT, reason, kv_capacity_tokens=capacity, **sizes)
    reason = f"holds {capacity:,} KV tokens >= {needed:,} needed"
    return Candidate(tp, Verdict.FITS, reason, kv_capacity_tokens=capacity, **sizes)


def _as_model_spec(model: ModelSpec | str | pathlib.Path | dict[str, Any]) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec.from_config(model)
    return ModelSpec.from_path(model)


def _check_positive(**values: int) -> None:
    for field, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be an integer >= 1, got {value!r}")


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GiB:.1f} GiB"
