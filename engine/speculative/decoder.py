"""The engine's speculative side: pick k, gather proposals, build the verify step, and keep
the books after it. The engine calls, per decode step:

    k = spec.choose_k(running)                 # before scheduling: lookahead slots
    plan = spec.plan(scheduled_seqs, k)        # proposals; None = run a plain decode step
    shape = spec.verify_shape(plan)
    inp = spec.build_input(plan, shape)        # the verify step's ModelInput
    ... executor.execute(inp) -> VerifyOutput, tokens appended one by one ...
    spec.on_verified(seq, num_proposed, num_accepted)
    spec.release(seq)                          # finished or aborted
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.model_input import ModelInput, dummy_model_input
from engine.sequence import Sequence
from engine.shapes import StepShape, StepShaper
from engine.speculative.adaptive import (
    DEFAULT_DRAFT_COSTS,
    DEFAULT_NGRAM_COSTS,
    AcceptanceTracker,
    StepCosts,
    choose_hybrid,
    choose_k,
    k_choices,
)
from engine.speculative.config import SpeculativeConfig
from engine.speculative.inputs import build_verify_input
from engine.speculative.ngram import NgramProposer
from engine.speculative.proposer import DRAFT, NGRAM, Proposer

CALIBRATION_REPEATS = 5
HOST_DECAY = 0.9  # EWMA weight of the previous host-time estimate, per decode step
HIT_DECAY = 0.9  # EWMA weight of the previous n-gram hit rate, per hybrid step


@dataclass
class VerifyPlan:
    seqs: list[Sequence]
    proposals: list[list[int]]  # per row, 0..k tokens
    draft_probs: torch.Tensor | None  # [rows, >= max proposals, vocab] or None (n-gram)
    sources: list[str]  # per row: NGRAM or DRAFT

    @property
    def max_proposals(self) -> int:
        return max(len(p) for p in self.proposals)

    @property
    def num_tokens(self) -> int:
        """Tokens the verify step feeds, padding excluded."""
        return sum(len(p) + 1 for p in self.proposals)


class SpecDecoder:
    """Speculative decoding for one engine (see the module docstring)."""

    def __init__(
        self,
        config: SpeculativeConfig,
        shaper: StepShaper,
        max_model_len: int,
        proposer: Proposer,
    ):
        self.config = config
        self.shaper = shaper
        self.block_size = shaper.block_size
        self.max_model_len = max_model_len
        self.proposer = proposer
        self.k_choices = k_choices(config.num_speculative_tokens, config.adaptive)
        self.verify_query_lens = tuple(k + 1 for k in self.k_choices)
        self.costs: StepCosts = (
            DEFAULT_NGRAM_COSTS if config.method == "ngram" else DEFAULT_DRAFT_COSTS
        )
        self.is_calibrated = False  # costs in seconds (calibrate) or relative (defaults)
        self.acceptance = {NGRAM: AcceptanceTracker(), DRAFT: AcceptanceTracker()}
        self.is_hybrid = config.method == "hybrid"
        self.use_draft = True  # hybrid: this step's proposals may come from the draft
        self.hit_rate = 0.5  # hybrid: share of rows whose n-gram lookup fills the budget
        # Host time of a decode step (scheduling, inputs, outputs): paid once per step
        # whatever k is, so it makes fewer, longer steps cheaper. Seconds, EWMA.
        self.host_s = 0.0
        self._step_proposer_s = 0.0
        self._counts = dict.fromkeys(("steps", "seqs", "drafted", "accepted"), 0)
        self._proposer_s = 0.0

    @classmethod
    def create(
        cls, engine_config, shaper: StepShaper, executor, target_path: Path, target_tokenizer
    ) -> SpecDecoder:
        """Build the configured proposer around the engine's target. A draft is loaded on
        the executor's device (a local executor's; else engine_config.device, in this
        process) after checking it shares the target's vocabulary."""
        config: SpeculativeConfig = engine_config.speculative
        max_model_len = engine_config.max_model_len
        if config.method == "ngram":
            proposer = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
            return cls(config, shaper, max_model_len, proposer)
        from engine.devices import get_device
        from engine.loader import load_config, resolve_model_path
        from engine.speculative.draft import DraftProposer
        from engine.speculative.vocab import check_same_vocab

        if config.draft_model is None:
            from engine.assets import default_draft_model_path

            draft_path = default_draft_model_path()
        else:
            draft_path = resolve_model_path(config.draft_model)
        draft_config = load_config(draft_path)
        target_config = load_config(target_path)
        check_same_vocab(target_path, target_config, target_tokenizer, draft_path, draft_config)
        draft_max = getattr(draft_config, "max_position_embeddings", None)
        if draft_max is not None and draft_max < max_model_len:
            raise ValueError(
                f"the draft model {draft_path} has max_position_embeddings {draft_max}, "
                f"less than max_model_len {max_model_len}: lower max_model_len"
            )
        device = getattr(executor, "device", None) or get_device(engine_config.device)
        proposer = DraftProposer(
            draft_path, device, engine_config.dtype, shaper, engine_config.strict_shapes
        )
        if config.method == "hybrid":
            from engine.speculative.hybrid import HybridProposer

            ngram = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
            proposer = HybridProposer(ngram, proposer)
        return cls(config, shaper, max_model_len, proposer)

    # -- start-up -----------------------------------------------------------------------
    @property
    def draft(self):
        """The DraftProposer, or None for n-gram."""
        if isinstance(self.proposer, NgramProposer):
            return None
        return getattr(self.proposer, "draft", self.proposer)

    @property
    def kv_bytes_per_token(self) -> int:
        """Draft KV bytes per cache token (0 for n-gram)."""
        return self.draft.kv_spec.bytes_per_token if self.draft is not None else 0

    def init_kv_cache(self, num_blocks: int) -> None:
        if self.draft is not None:
            self.draft.init_kv_cache(num_blocks)

    def warmup(self, capture: bool, graph_kinds: tuple[str, ...]) -> int:
        """Warm the draft's shapes (eagerly, or capturing graphs of graph_kinds).
        Returns how many shapes."""
        if self.draft is None:
            return 0
        shapes = self.draft.warmup_shapes()
        if capture:
            shapes = [s for s in shapes if s.kind in graph_kinds]
        self.draft.warmup(shapes, capture)
        return len(shapes)

    def calibrate(self, executor) -> StepCosts:
        """Time warmed all-padding steps at every decode batch bucket (the target at each
        verify length and at 1 token per row, the draft at 1) over a middle context
        bucket; adaptive speculation then uses these measured costs."""
        from engine.buckets import block_buckets, decode_batch_buckets

        blocks = block_buckets(self.shaper.buckets)
        num_blocks = blocks[len(blocks) // 2]
        target: dict[int, float] = {}
        draft: dict[int, float] = {}
        for batch in decode_batch_buckets(self.shaper.buckets):
            for query_len in (1, *self.verify_query_lens):
                shape = self.shaper.decode_shape(batch, num_blocks, query_len)
                target[shape.num_tokens] = _time(executor.execute, dummy_model_input(shape))
            if self.draft is not None:
                shape = self.shaper.decode_shape(batch, num_blocks)
                draft[shape.num_tokens] = _time(self.draft.runner.execute, dummy_model_input(shape))
        self.costs = StepCosts(_monotone(target), _monotone(draft))
        self.is_calibrated = True
        return self.costs

    # -- per step -----------------------------------------------------------------------
    def choose_k(self, running: list[Sequence]) -> int:
        """Proposals per sequence for the next decode step (0 = plain decode)."""
        if not running:
            return 0
        if not self.config.adaptive:
            return self.config.num_speculative_tokens
        batch = self.shaper.decode_shape(len(running), 1).batch_size
        ids = [seq.request_id for seq in running]
        # Default costs are relative (no unit): host seconds only add to calibrated ones.
        host_s = self.host_s if self.is_calibrated else 0.0
        if self.is_hybrid:
            ngram = [self.acceptance[NGRAM].alpha(i) for i in ids]
            draft = [self.acceptance[DRAFT].alpha(i) for i in ids]
            k, self.use_draft = choose_hybrid(
                ngram, draft, self.hit_rate, batch, self.k_choices, self.costs, host_s=host_s
            )
            return k
        tracker = self.acceptance[NGRAM if self.config.method == "ngram" else DRAFT]
        alphas = [tracker.alpha(i) for i in ids]
        return choose_k(alphas, batch, self.k_choices, self.costs, host_s=host_s)

    def plan(self, seqs: list[Sequence], k: int) -> VerifyPlan | None:
        """Proposals for a decode step of seqs with up to k per sequence; None when there
        are none (the step runs as a plain decode step)."""
        budgets = [self._budget(seq, k) for seq in seqs]
        if not any(budgets):
            return self._plain_step()
        start = time.perf_counter()
        if self.is_hybrid:
            proposals = self.proposer.propose(seqs, budgets, use_draft=self.use_draft)
            self._update_hit_rate(proposals, budgets)
        else:
            proposals = self.proposer.propose(seqs, budgets)
        self._step_proposer_s = time.perf_counter() - start
        self._proposer_s += self._step_proposer_s
        if not any(proposals.token_ids):
            return self._plain_step()
        return VerifyPlan(seqs, *proposals)

    def _plain_step(self) -> None:
        for tracker in self.acceptance.values():
            tracker.on_plain_step()

    def _update_hit_rate(self, proposals, budgets: list[int]) -> None:
        rows = [
            source == NGRAM and len(tokens) == budget
            for tokens, source, budget in zip(
                proposals.token_ids, proposals.sources, budgets, strict=True
            )
            if budget
        ]
        self.hit_rate = HIT_DECAY * self.hit_rate + (1 - HIT_DECAY) * sum(rows) / len(rows)

    def _budget(self, seq: Sequence, k: int) -> int:
        """Proposals worth making for seq: within k, its remaining tokens, max_model_len
        and the slots its block table holds (positions num_tokens - 1 + n)."""
        remaining = seq.params.max_tokens - seq.num_output_tokens
        capacity = len(seq.block_table) * self.block_size
        limit = min(k, remaining - 1, self.max_model_len - seq.num_tokens - 1)
        return max(0, min(limit, capacity - seq.num_tokens))

    def verify_shape(self, plan: VerifyPlan) -> StepShape:
        needed = plan.max_proposals + 1
        query_len = min((q for q in self.verify_query_lens if q >= needed), default=needed)
        max_blocks = max(
            -(-(seq.num_tokens + len(p)) // self.block_size)
            for seq, p in zip(plan.seqs, plan.proposals, strict=True)
        )
        return self.shaper.decode_shape(len(plan.seqs), max_blocks, query_len)

    def build_input(self, plan: VerifyPlan, shape: StepShape) -> ModelInput:
        return build_verify_input(
            plan.seqs, plan.proposals, plan.draft_probs, shape, self.block_size
        )

    def on_verified(self, seq: Sequence, num_proposed: int, num_accepted: int, source: str) -> None:
        """Books after a verify step, for each row still running or just finished."""
        if num_proposed:
            self._counts["seqs"] += 1
            self._counts["drafted"] += num_proposed
            self._counts["accepted"] += num_accepted
            self.acceptance[source].record(seq.request_id, num_proposed, num_accepted)
        self.proposer.on_verified(seq)

    def on_verify_step(self) -> None:
        self._counts["steps"] += 1

    def on_decode_step(self, total_s: float, execute_s: float) -> None:
        """A decode or verify step took total_s, execute_s of it in the executor: the rest,
        less proposing, is host time."""
        host_s = max(total_s - execute_s - self._step_proposer_s, 0.0)
        self.host_s = HOST_DECAY * self.host_s + (1.0 - HOST_DECAY) * host_s
        self._step_proposer_s = 0.0

    def release(self, seq: Sequence) -> None:
        self.proposer.release(seq)
        for tracker in self.acceptance.values():
            tracker.release(seq.request_id)

    @property
    def num_bucket_misses(self) -> int:
        """Draft steps whose shape was not warmed."""
        return self.draft.num_bucket_misses if self.draft is not None else 0

    def stats(self) -> dict[str, int | float]:
        """The speculative fields of EngineStats."""
        c = self._counts
        return dict(
            num_verify_steps=c["steps"],
            num_draft_tokens=c["drafted"],
            num_accepted_tokens=c["accepted"],
            acceptance_rate=c["accepted"] / c["drafted"] if c["drafted"] else 0.0,
            mean_accepted_tokens=c["accepted"] / c["seqs"] if c["seqs"] else 0.0,
            proposer_s=self._proposer_s,
        )

    def shutdown(self) -> None:
        if self.draft is not None:
            self.draft.shutdown()


def _time(execute, inp: ModelInput) -> float:
    """Best of CALIBRATION_REPEATS steps, in seconds (execute syncs with the host)."""
    best = float("inf")
    for _ in range(CALIBRATION_REPEATS):
        start = time.perf_counter()
        execute(inp)
        best = min(best, time.perf_counter() - start)
    return best


def _monotone(times: dict[int, float]) -> tuple[tuple[int, float], ...]:
    """(tokens, seconds) ascending, each at least the one before (timing noise aside, more
    tokens never cost less)."""
    points, floor = [], 0.0
    for tokens in sorted(times):
        floor = max(floor, times[tokens])
        points.append((tokens, floor))
    return tuple(points)
