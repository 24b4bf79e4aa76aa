"""Speculative decoding as the engine's step strategy (engine.strategy): pick k, gather
proposals, build the verify step, and keep the books after it.

A decode step with proposals feeds each row [last token, *proposals] and the target's
verification (engine.speculative.verify) accepts a prefix of them plus one token of its
own, so a row yields 1..k + 1 tokens; without proposals (k = 0, or none found) it is a
plain decode step. The scheduler reserves k lookahead slots per row from free blocks; the
engine trims what a row did not use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.messages import ModelInput, StepOutput
from engine.scheduler import SchedulerOutput, StepKind
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
from engine.speculative.calibrate import measure_step_costs
from engine.speculative.config import SpeculativeConfig
from engine.speculative.inputs import build_verify_input
from engine.speculative.ngram import NgramProposer
from engine.speculative.proposer import DRAFT, NGRAM, Proposer
from engine.speculative.proposers import create_proposer
from engine.strategy import DecodeStrategy

logger = logging.getLogger(__name__)

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


class SpeculativeDecoding(DecodeStrategy):
    """Speculative decoding for one engine (see the module docstring)."""

    def __init__(
        self,
        config: SpeculativeConfig,
        shaper: StepShaper,
        max_model_len: int,
        proposer: Proposer,
    ):
        super().__init__(shaper)
        self.config = config
        self.block_size = shaper.block_size
        self.max_model_len = max_model_len
        self.proposer = proposer
        self.k_choices = k_choices(config.num_speculative_tokens, config.adaptive)
        self.verify_query_lens = tuple(k + 1 for k in self.k_choices)
        self.decode_query_lens = (1, *self.verify_query_lens)
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
        self._plan: VerifyPlan | None = None  # the current step's, from build_input
        self._step_proposer_s = 0.0
        self._counts = dict.fromkeys(("steps", "seqs", "drafted", "accepted"), 0)
        self._proposer_s = 0.0

    @classmethod
    def create(
        cls, engine_config, shaper: StepShaper, executor, target_path: Path, target_tokenizer
    ) -> SpeculativeDecoding:
        """Build the configured proposer (engine.speculative.proposer) around the target."""
        proposer = create_proposer(engine_config, shaper, executor, target_path, target_tokenizer)
        return cls(engine_config.speculative, shaper, engine_config.max_model_len, proposer)

    # -- start-up -----------------------------------------------------------------------
    @property
    def draft(self):
        """The DraftProposer, or None for n-gram."""
        if isinstance(self.proposer, NgramProposer):
            return None
        return getattr(self.proposer, "draft", self.proposer)

    @property
    def kv_bytes_per_token(self) -> int:
        """Draft KV bytes per cache token (0 for n-gram): its cache mirrors the target's."""
        return self.draft.kv_spec.bytes_per_token if self.draft is not None else 0

    def init_kv_cache(self, num_blocks: int) -> None:
        if self.draft is not None:
            self.draft.init_kv_cache(num_blocks)

    def warmup(self, capture: bool, graph_kinds: tuple[str, ...]) -> None:
        """Warm the draft's shapes (eagerly, or capturing graphs of graph_kinds)."""
        if self.draft is None:
            return
        shapes = self.draft.warmup_shapes()
        if capture:
            shapes = [s for s in shapes if s.kind in graph_kinds]
        self.draft.warmup(shapes, capture)

    def calibrate(self, executor) -> None:
        """Adaptive speculation: replace the default relative costs with measured ones."""
        if not self.config.adaptive:
            return
        runner = self.draft.runner if self.draft is not None else None
        self.costs = measure_step_costs(executor, runner, self.shaper, self.verify_query_lens)
        self.is_calibrated = True
        logger.info("speculative step costs: %s", self.costs)

    # -- per step -----------------------------------------------------------------------
    def num_lookahead_tokens(self, running: list[Sequence]) -> int:
        """k, the proposals per sequence of the next decode step (0 = plain decode)."""
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

    def build_input(self, sched: SchedulerOutput, num_lookahead_tokens: int) -> ModelInput:
        """A verify step when a decode step has proposals, else the plain step."""
        self._plan = None
        if sched.kind is StepKind.DECODE:
            self._plan = self._propose([item.seq for item in sched.scheduled], num_lookahead_tokens)
        if self._plan is None:
            return super().build_input(sched, num_lookahead_tokens)
        plan = self._plan
        return build_verify_input(
            plan.seqs, plan.proposals, plan.draft_probs, self._verify_shape(plan), self.block_size
        )

    def _propose(self, seqs: list[Sequence], k: int) -> VerifyPlan | None:
        """Up to k proposals per sequence; None when there are none."""
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

    def _verify_shape(self, plan: VerifyPlan) -> StepShape:
        needed = plan.max_proposals + 1
        query_len = min((q for q in self.verify_query_lens if q >= needed), default=needed)
        max_blocks = max(
            -(-(seq.num_tokens + len(p)) // self.block_size)
            for seq, p in zip(plan.seqs, plan.proposals, strict=True)
        )
        return self.shaper.decode_shape(len(plan.seqs), max_blocks, query_len)

    def on_step_output(self, sched: SchedulerOutput, out: StepOutput) -> None:
        """After a verify step: acceptance per row (finished rows included), and the
        proposer rolls back past each row's accepted tokens."""
        plan, self._plan = self._plan, None
        if plan is None:
            return
        self._counts["steps"] += 1
        for seq, proposals, tokens, source in zip(
            plan.seqs, plan.proposals, out.token_ids, plan.sources, strict=True
        ):
            if proposals:
                num_accepted = len(tokens) - 1  # the last token is the target's own
                self._counts["seqs"] += 1
                self._counts["drafted"] += len(proposals)
                self._counts["accepted"] += num_accepted
                self.acceptance[source].record(seq.request_id, len(proposals), num_accepted)
            self.proposer.on_verified(seq)

    def on_step_end(self, sched: SchedulerOutput, total_s: float, execute_s: float) -> None:
        """A decode step's host time: the rest of total_s, less executing and proposing."""
        if sched.kind is not StepKind.DECODE:
            return
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
