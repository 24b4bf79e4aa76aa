"""A replica's capacity at the SLO, in tokens/s, from its step-time model.

The autoscaler sizes replicas in tokens, not requests, and reasons with the same step-time
model as the router (autoscale/step_time.py), summarised as a `StepTimePrior` (straight
lines, the context folded into the per-row term; `summarize_step_time`). At the SLO:

    decode:  the largest batch b whose step meets tpot_s, fixed + per_seq * b <= tpot_s,
             at most max_num_seqs; capacity b / step_s(b) tokens/s. If even one row misses
             tpot_s, a batch of one (`meets_tpot` False: more replicas cannot fix a slow
             step, only a faster device or a smaller model can);
    prefill: one step of n tokens, the engine's per-step budget (prefill_chunk_tokens) but
             no more than fits in ttft_s; capacity n / step_s(n) tokens/s.

Prefill and decode steps share the device's time, so a replica serving P prompt tokens/s
and O output tokens/s is busy `utilization(P, O) = P / prefill + O / decode` of the time
(1.0: fully busy). This is an approximation: a decode step delayed by a prefill step
stretches TPOT, which is why the policy targets a utilization well under 1.

Worked example (tpot_s 50 ms; decode 10 ms + 1 ms per row; prefill 0.1 ms per token):

    >>> prior = StepTimePrior(prefill_fixed_s=0.0, prefill_per_token_s=1e-4,
    ...                       decode_fixed_s=0.01, decode_per_seq_s=0.001)
    >>> cap = capacity_at_slo(prior, ttft_s=1.0, tpot_s=0.05, max_num_seqs=256,
    ...                       prefill_chunk_tokens=2048)
    >>> cap.decode_batch, round(cap.decode_tokens_s), round(cap.prefill_tokens_s)
    (40, 800, 10000)
    >>> cap.utilization(prompt_tokens_s=2000, output_tokens_s=400)  # 0.2 + 0.5
    0.7
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from autoscale.step_time import DECODE, PREFILL, StepTimeModel, StepTimePrior


class ReplicaCapacity(NamedTuple):
    """What one replica can serve while meeting the SLO."""

    prefill_tokens_s: float  # uncached prompt tokens/s, prefill alone
    decode_tokens_s: float  # output tokens/s, decode alone
    decode_batch: int  # rows per decode step at the SLO
    meets_tpot: bool  # False: a single row's step already misses tpot_s

    def utilization(self, prompt_tokens_s: float, output_tokens_s: float) -> float:
        """Fraction of the replica's time the given rates keep it busy (module doc)."""
        return prompt_tokens_s / self.prefill_tokens_s + output_tokens_s / self.decode_tokens_s

    def tokens_s(self, prompt_tokens_s: float, output_tokens_s: float) -> float:
        """Tokens/s (prompt + output) one fully busy replica serves at this mix of prompt
        and output tokens; decode alone when the mix is unknown (both rates 0)."""
        load = self.utilization(prompt_tokens_s, output_tokens_s)
        if load <= 0:
            return self.decode_tokens_s
        return (prompt_tokens_s + output_tokens_s) / load


def capacity_at_slo(
    step_time: StepTimePrior,
    ttft_s: float,
    tpot_s: float,
    max_num_seqs: int,
    prefill_chunk_tokens: int,
) -> ReplicaCapacity:
    """A replica's capacity at the SLO from its step-time lines (module doc)."""
    if step_time.decode_per_seq_s > 0:
        fitting = math.floor((tpot_s - step_time.decode_fixed_s) / step_time.decode_per_seq_s)
    else:
        fitting = max_num_seqs if step_time.decode_fixed_s <= tpot_s else 0
    batch = max(1, min(fitting, max_num_seqs))
    decode_s = step_time.step_s(DECODE, batch, 0)
    chunk = prefill_chunk_tokens
    if step_time.prefill_per_token_s > 0:
        fits_ttft = math.floor((ttft_s - step_time.prefill_fixed_s) / step_time.prefill_per_token_s)
        chunk = max(1, min(chunk, fits_ttft))
    prefill_s = step_time.step_s(PREFILL, chunk, 0)
    return ReplicaCapacity(
        prefill_tokens_s=chunk / prefill_s if prefill_s > 0 else math.inf,
        decode_tokens_s=batch / decode_s if decode_s > 0 else math.inf,
        decode_batch=batch,
        meets_tpot=fitting >= 1,
    )


def mean_capacity(capacities: Sequence[ReplicaCapacity]) -> ReplicaCapacity:
    """The fleet's typical replica: the mean of each rate (at least one capacity)."""
    if not capacities:
        raise ValueError("mean_capacity needs at least one replica capacity, got none")
    n = len(capacities)
    return ReplicaCapacity(
        prefill_tokens_s=sum(c.prefill_tokens_s for c in capacities) / n,
        decode_tokens_s=sum(c.decode_tokens_s for c in capacities) / n,
        decode_batch=round(sum(c.decode_batch for c in capacities) / n),
        meets_tpot=all(c.meets_tpot for c in capacities),
    )


def summarize_step_time(
    model: StepTimeModel,
    prefill_tokens: tuple[int, int] = (128, 2048),
    decode_rows: tuple[int, int] = (1, 64),
) -> StepTimePrior | None:
    """A replica's fitted step times as straight lines (a `StepTimePrior`), for its
    autoscaling metrics: each line through the model's predictions at two sizes, decode
    at the window's typical context per row. None while the model has seen no step."""
    if not model.has_data:
        return None
    p_lo, p_hi = (model.prefill_s(n) for n in prefill_tokens)
    d_lo, d_hi = (model.decode_step_s(b) for b in decode_rows)
    per_token = max(0.0, (p_hi - p_lo) / (prefill_tokens[1] - prefill_tokens[0]))
    per_seq = max(0.0, (d_hi - d_lo) / (decode_rows[1] - decode_rows[0]))
    return StepTimePrior(
        prefill_fixed_s=max(0.0, p_lo - per_token * prefill_tokens[0]),
        prefill_per_token_s=per_token,
        decode_fixed_s=max(0.0, d_lo - per_seq * decode_rows[0]),
        decode_per_seq_s=per_seq,
    )
