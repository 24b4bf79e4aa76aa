"""Draft-model proposals: a small model sharing the target's tokenizer runs k cheap
decode-like steps per verify step, on its own paged KV cache.

The draft's cache mirrors the target's: the same block size and block ids (the draft holds
`num_blocks` blocks of its own layers/heads/head_dim), so every sequence's block table
serves both models and no second block manager is needed. The draft runs in this process
on the engine's device (rank 0's side when the target is tensor-parallel).

The draft's KV is brought up to date lazily, right before it proposes for a sequence:
`num_computed[seq]` counts the leading positions whose draft KV holds the sequence's true
tokens. A round for a sequence of L tokens with a budget of n proposals:
1. catch-up (prefill-shaped steps, chunked like a prompt): feed positions
   num_computed .. L - 3, when more than the last two tokens are missing (a new or
   preempted sequence, or one that decoded without speculation for a while);
2. sync (a decode-shaped step of 2 query tokens, left-padded): feed the last 1 or 2
   tokens; its last logits give d_1;
3. n - 1 decode steps feed d_1 .. d_{n-1} at positions L .. L + n - 2 and give d_2 .. d_n.
   Inputs are chained on the device, so the round makes one host sync.
After verification accepts a of the n proposals, the draft KV is valid up to position
L - 1 + min(a, n - 1): it never fed d_n, so when all n are accepted its next sync step
feeds two tokens (d_n and the target's bonus token), else one.
Rejected proposals' KV stays in the cache but is never read: positions past a query's own
are masked, and they are overwritten before they are needed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.devices import Device
from engine.errors import BucketMissError
from engine.loader import KVSpec, load_config, load_model, resolve_dtype
from engine.messages import FeedRow, ModelInput
from engine.model_input import (
    SamplingRow,
    build_feed_input,
    dummy_model_input,
    rows_sampling_input,
)
from engine.model_runner import ModelRunner
from engine.sampler import process_logits, race
from engine.sequence import Sequence
from engine.shapes import StepShape, StepShaper
from engine.speculative.proposer import DRAFT, Proposals
from engine.speculative.verify import DRAFT_SALT

SYNC_QUERY_LEN = 2  # tokens a sync step feeds per row, at most


class DraftProposer:
    """The `Proposer` of method "draft" (see engine.speculative.strategy)."""

    def __init__(
        self,
        draft_path: Path,
        device: Device,
        dtype_name: str,
        shaper: StepShaper,
        strict_shapes: bool,
        kv_cache_dtype: str = "auto",
    ):
        self.path = draft_path
        self.hf_config = load_config(draft_path)
        self.device = device
        dtype = resolve_dtype(dtype_name, self.hf_config, self.device)
        # the engine's kv_cache_dtype: the draft's cache mirrors the target's, fp8 included
        self.kv_spec = KVSpec.from_config(self.hf_config, dtype, kv_cache_dtype=kv_cache_dtype)
        model = load_model(draft_path, dtype, self.device.torch_device)
        self.shaper = shaper
        self.block_size = shaper.block_size
        self.runner = ModelRunner(
            self.device.prepare_model(model), self.device, self.kv_spec, self.block_size
        )
        self.strict_shapes = strict_shapes
        self.warmed: set[StepShape] = set()
        self.num_bucket_misses = 0
        self.num_steps = 0
        # seq_id -> (the seq's num_preemptions when counted, positions with valid draft KV)
        self._computed: dict[int, tuple[int, int]] = {}

    # -- start-up -----------------------------------------------------------------------
    def warmup_shapes(self) -> list[StepShape]:
        return self.shaper.warmup_shapes(decode_query_lens=(1, SYNC_QUERY_LEN))

    def init_kv_cache(self, num_blocks: int) -> None:
        self.runner.init_kv_cache(num_blocks)

    def warmup(self, shapes: list[StepShape], capture: bool) -> None:
        for shape in shapes:
            self.runner.warmup(dummy_model_input(shape), capture=capture)
            self.device.mark_step()
        self.warmed |= set(shapes)

    # -- proposing ----------------------------------------------------------------------
    def num_computed(self, seq: Sequence) -> int:
        preemptions, computed = self._computed.get(seq.seq_id, (None, 0))
        return computed if preemptions == seq.num_preemptions else 0

    def _set_computed(self, seq: Sequence, computed: int) -> None:
        self._computed[seq.seq_id] = (seq.num_preemptions, computed)

    def propose(self, seqs: list[Sequence], budgets: list[int]) -> Proposals:
        """Up to budgets[b] >= 0 proposals per sequence, with q the draft's processed
        distribution of each, [rows, max budget, vocab] on the device (None when every row
        is greedy)."""
        active = [i for i, n in enumerate(budgets) if n > 0]
        proposals: list[list[int]] = [[] for _ in seqs]
        if not active:
            return Proposals(proposals, None, [DRAFT] * len(seqs))
        rows = [seqs[i] for i in active]
        counts = [budgets[i] for i in active]
        self._catch_up(rows)
        tokens, probs = self._run_round(rows, counts)
        for i, row_tokens, n in zip(active, tokens, counts, strict=True):
            proposals[i] = row_tokens[:n]
            self._set_computed(seqs[i], seqs[i].num_tokens + n - 1)
        if probs is not None and len(active) < len(seqs):
            full = probs.new_ones((len(seqs), *probs.shape[1:]))
            full[torch.tensor(active, device=probs.device)] = probs
            probs = full
        return Proposals(proposals, probs, [DRAFT] * len(seqs))

    def on_verified(self, seq: Sequence) -> None:
        """After verification: positions past the target's accepted ones hold rejected
        proposals (or were never fed)."""
        if seq.seq_id in self._computed:
            self._set_computed(seq, min(self.num_computed(seq), seq.num_computed_tokens))

    def release(self, seq: Sequence) -> None:
        self._computed.pop(seq.seq_id, None)

    def _catch_up(self, seqs: list[Sequence]) -> None:
        """Prefill-shaped steps until every row misses at most its last 2 tokens."""
        while True:
            behind = [s for s in seqs if s.num_tokens - self.num_computed(s) > SYNC_QUERY_LEN]
            if not behind:
                return
            group = behind[: self.shaper.max_prefill_batch_size]
            limit = self.shaper.max_prefill_len(len(group))
            rows = []
            for seq in group:
                start = self.num_computed(seq)
                n = min(seq.num_tokens - SYNC_QUERY_LEN - start, limit)
                rows.append(FeedRow(seq.token_ids[start : start + n], start, seq.block_table))
            max_blocks = max(self._blocks(r.start + len(r.token_ids)) for r in rows)
            shape = self.shaper.prefill_shape(
                len(rows), max(len(r.token_ids) for r in rows), max_blocks
            )
            sampling = rows_sampling_input([], shape.batch_size)
            self._run(build_feed_input("prefill", rows, self.block_size, shape, sampling))
            for seq, row in zip(group, rows, strict=True):
                self._set_computed(seq, row.start + len(row.token_ids))

    def _run_round(
        self, seqs: list[Sequence], budgets: list[int]
    ) -> tuple[list[list[int]], torch.Tensor | None]:
        """The sync step, then max(budgets) - 1 chained decode steps. Returns each row's
        max(budgets) tokens (past a row's budget: filler) and their q, or None."""
        k = max(budgets)
        bs = self.block_size
        max_blocks = max(
            self._blocks(s.num_tokens + n - 1) for s, n in zip(seqs, budgets, strict=True)
        )
        sync_shape = self.shaper.decode_shape(len(seqs), max_blocks, SYNC_QUERY_LEN)
        feed = []
        for seq in seqs:
            start = self.num_computed(seq)
            feed.append(FeedRow(seq.token_ids[start:], start, seq.block_table))
        sampling_rows = [SamplingRow(seq, [], 0) for seq in seqs]
        sampling = rows_sampling_input(sampling_rows, len(seqs), history_slack=k)
        inp = build_feed_input("decode", feed, bs, sync_shape, sampling)
        dev = self.device.torch_device
        sampling = sampling.to(dev, len(seqs))
        logits = self._run(inp)[:, -1]
        tokens, probs = _draw(logits, sampling, 0)
        all_tokens, all_probs = [tokens], [probs]
        if k > 1:
            step_shape = self.shaper.decode_shape(len(seqs), max_blocks, 1)
            tables = inp.block_tables.to(dev)
            pad = step_shape.batch_size - len(seqs)
            last = torch.tensor([s.num_tokens - 1 for s in seqs] + [0] * pad, device=dev)
            budget = torch.tensor(budgets + [0] * pad, device=dev)
            lengths = torch.tensor([s.num_tokens for s in seqs], device=dev)
        for i in range(1, k):
            # Feed d_i at position L - 1 + i; rows past their budget become padding.
            is_active = budget > i
            positions = torch.where(is_active, last + i, 0)
            ids = torch.where(is_active[: len(seqs)], tokens, 0)
            ids = torch.nn.functional.pad(ids, (0, pad))
            blocks = tables.gather(1, (positions // bs)[:, None])[:, 0]
            slots = torch.where(is_active, blocks * bs + positions % bs, 0)
            if sampling.history is not None:
                sampling.history.scatter_(1, (lengths + i - 1)[:, None], tokens[:, None])
            step = ModelInput(
                kind="decode",
                input_ids=ids[:, None],
                positions=positions[:, None],
                slot_mapping=slots,
                block_tables=tables,
                sampling=sampling,
                num_seqs=len(seqs),
                shape=step_shape,
                num_tokens=sum(n > i for n in budgets),  # rows still within their budget
            )
            tokens, probs = _draw(self._run(step)[:, -1], sampling, i)
            all_tokens.append(tokens)
            all_probs.append(probs)
        token_lists = torch.stack(all_tokens, dim=1).tolist()  # the round's one host sync
        q = None if all_probs[0] is None else torch.stack(all_probs, dim=1)
        return token_lists, q

    def _run(self, inp: ModelInput) -> torch.Tensor:
        if inp.shape not in self.warmed:
            self.num_bucket_misses += 1
            if self.strict_shapes:
                raise BucketMissError(
                    f"draft step shape {inp.shape} was not warmed (strict_shapes); warmed: "
                    f"{len(self.warmed)} shapes"
                )
        self.num_steps += 1
        logits = self.runner.run_logits(inp)
        self.device.mark_step()
        return logits

    def _blocks(self, num_tokens: int) -> int:
        return max(1, -(-num_tokens // self.block_size))

    def shutdown(self) -> None:
        self.runner.kv_caches = []


def _draw(logits: torch.Tensor, sampling, offset: int):
    """The draft's token per row: argmax for greedy rows, else a draw from its processed
    distribution q in the draft's own noise stream. -> (tokens [rows], q or None)."""
    greedy, probs = process_logits(logits, sampling)
    if probs is None:
        return greedy, None
    sampled = race(probs, sampling.seeds ^ DRAFT_SALT, sampling.counters + offset)
    return torch.where(sampling.temperature > 0, sampled, greedy), probs
