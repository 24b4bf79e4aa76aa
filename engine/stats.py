"""EngineStats: a snapshot of one engine's queues, KV cache, step counters and
speculative-decoding acceptance, as returned by `Engine.stats()`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    num_waiting: int
    num_running: int
    num_free_blocks: int
    num_total_blocks: int
    kv_usage: float
    num_preemptions: int
    num_prefix_hit_tokens: int
    num_prefill_tokens: int  # prompt tokens actually computed
    num_generated_tokens: int
    num_steps: int
    num_bucket_misses: int  # steps whose padded shape was not warmed
    num_real_tokens: int  # tokens fed to the model, padding excluded
    num_padded_tokens: int  # tokens the padded steps computed
    num_graph_replays: int
    num_eager_runs: int
    num_warmed_shapes: int
    warmup_s: float
    # Speculative decoding (zeros when off). A verified sequence-step is one sequence in a
    # verify step with at least one proposal.
    num_verify_steps: int = 0
    num_draft_tokens: int = 0  # proposals verified
    num_accepted_tokens: int = 0  # proposals accepted
    acceptance_rate: float = 0.0  # accepted / proposed
    mean_accepted_tokens: float = 0.0  # accepted proposals per verified sequence-step
    proposer_s: float = 0.0  # time spent proposing (draft forwards or n-gram lookup)

    @property
    def padding_ratio(self) -> float:
        """Padded tokens per real token (1.0 = no padding)."""
        return self.num_padded_tokens / self.num_real_tokens if self.num_real_tokens else 1.0
