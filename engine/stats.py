"""EngineStats: a snapshot of one engine's queues, KV cache, step counters and
speculative-decoding acceptance, as returned by `Engine.stats()`.

Every field declares its metric kind, which exporters (deployments.metrics) use as is:
- "counter": cumulative since the engine started, never decreases (steps, tokens, seconds
  spent proposing);
- "gauge": the value now, may go up or down (queue lengths, KV usage, rates, ratios).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["COUNTER", "GAUGE", "METRIC_KINDS", "EngineStats"]

COUNTER = "counter"
GAUGE = "gauge"
METRIC_KINDS = (COUNTER, GAUGE)


def _counter(**kwargs: Any) -> Any:
    return dataclasses.field(metadata={"kind": COUNTER}, **kwargs)


def _gauge(**kwargs: Any) -> Any:
    return dataclasses.field(metadata={"kind": GAUGE}, **kwargs)


@dataclass(frozen=True)
class EngineStats:
    num_waiting: int = _gauge()
    num_running: int = _gauge()
    num_free_blocks: int = _gauge()
    num_total_blocks: int = _gauge()
    kv_usage: float = _gauge()
    num_preemptions: int = _counter()
    num_prefix_hit_tokens: int = _counter()
    num_prefill_tokens: int = _counter()  # prompt tokens actually computed
    num_generated_tokens: int = _counter()
    num_steps: int = _counter()
    num_bucket_misses: int = _counter()  # steps whose padded shape was not warmed
    num_real_tokens: int = _counter()  # tokens fed to the model, padding excluded
    num_padded_tokens: int = _counter()  # tokens the padded steps computed
    num_graph_replays: int = _counter()
    num_eager_runs: int = _counter()
    num_warmed_shapes: int = _gauge()
    warmup_s: float = _gauge()  # set once, at start-up
    # Speculative decoding (zeros when off). A verified sequence-step is one sequence in a
    # verify step with at least one proposal.
    num_verify_steps: int = _counter(default=0)
    num_draft_tokens: int = _counter(default=0)  # proposals verified
    num_accepted_tokens: int = _counter(default=0)  # proposals accepted
    acceptance_rate: float = _gauge(default=0.0)  # accepted / proposed
    mean_accepted_tokens: float = _gauge(default=0.0)  # accepted per verified sequence-step
    proposer_s: float = _counter(default=0.0)  # time spent proposing (draft or n-gram lookup)
    num_queued_prompt_tokens: int = _gauge(default=0)  # accepted, not yet prefilled or cached

    @property
    def padding_ratio(self) -> float:
        """Padded tokens per real token, over every step so far (1.0 = no padding; 1.25 =
        a quarter more tokens computed than fed). The share of one step that is padding is
        `engine.buckets.padding_fraction`."""
        return self.num_padded_tokens / self.num_real_tokens if self.num_real_tokens else 1.0

    @classmethod
    def metric_kinds(cls) -> dict[str, str]:
        """Metric kind (COUNTER or GAUGE) of every field and of `padding_ratio`."""
        kinds = {field.name: field.metadata["kind"] for field in dataclasses.fields(cls)}
        return kinds | {"padding_ratio": GAUGE}
