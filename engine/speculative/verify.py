"""Verification on the device: accept or reject every row's proposals in one batched call,
so that the output follows the target model exactly.

A verify step feeds each row [t, d_1 .. d_n] (its last token, then n <= k proposals) at
positions p .. p + n, left-padded to k + 1 columns, and keeps the target's logits at every
column: column j gives the target distribution p_j of the token after d_j (after t for
j = 0), processed like plain sampling (repetition penalty over the sequence and d_1..d_j,
temperature, top-k, top-p: `engine.sampler.process_logits`).

- Greedy rows accept the longest prefix with d_{j+1} == argmax p_j, then emit the target's
  argmax at the first mismatch (or the bonus token after all n): exactly the target's
  greedy output.
- Sampled rows use the standard rejection rule (Leviathan et al. 2023, Chen et al. 2023):
  accept d_{j+1} with probability min(1, p_j(d) / q_j(d)); at the first rejection draw from
  normalise(max(0, p_j - q_j)); after n acceptances draw the bonus from p_n. The emitted
  token at every position is then distributed exactly as p. The n-gram proposer has no q:
  it is a point mass on d, so d is accepted with probability p_j(d) and the residual is
  p_j with d removed.

Randomness is counter-based (`engine.sampler.uniform_noise`), keyed by the request's seed
and the output position of the token being decided, in three independent streams: the
draft's own draws (DRAFT_SALT), the accept tests (ACCEPT_SALT) and the target's draws (the
plain sampler's stream). A given seed and proposal schedule therefore reproduce the same
tokens whatever else is in the batch; with a different schedule (another k, or adaptive
choices) a seeded request gets a different, equally distributed sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.messages import SamplingInput, StepOutput
from engine.sampler import process_logits, race, uniform_noise

# Seeds of the draft's and the accept tests' noise streams: seed XOR salt (< 2**63).
DRAFT_SALT = 0x2545F4914F6CDD1D
ACCEPT_SALT = 0x1B873593CC9E2D51


@dataclass
class VerifyInput:
    """The proposals of a verify step (host tensors; `to` moves them to the device): the
    `TokenSelector` of a verify step's ModelInput.

    draft_token_ids: [batch, k] each row's proposals d_1..d_n, then zeros.
    num_draft_tokens: [batch] n per row, 0..k (0: the row only decodes its next token).
    draft_probs: [batch, k, vocab] the draft's processed distribution q of each proposal;
        None for the n-gram proposer (q is a point mass on the proposal).
    sampling: [batch * (k + 1)] rows; row b * (k + 1) + j holds row b's parameters for
        output position j: the history (for the repetition penalty) ends with d_1..d_j and
        the counter is the number of tokens generated before the step, plus j.
    """

    draft_token_ids: torch.Tensor
    num_draft_tokens: torch.Tensor
    draft_probs: torch.Tensor | None
    sampling: SamplingInput

    @property
    def num_speculative_tokens(self) -> int:
        return self.draft_token_ids.shape[1]

    def to(self, device: torch.device, num_rows: int) -> VerifyInput:
        q = self.draft_probs
        return VerifyInput(
            draft_token_ids=self.draft_token_ids[:num_rows].to(device, non_blocking=True),
            num_draft_tokens=self.num_draft_tokens[:num_rows].to(device, non_blocking=True),
            draft_probs=None if q is None else q[:num_rows].to(device, non_blocking=True),
            sampling=self.sampling.to(device, num_rows * (self.num_speculative_tokens + 1)),
        )

    def select(self, logits: torch.Tensor) -> VerifyOutput:
        return verify(logits, self)


class VerifyOutput(StepOutput):
    """Per row: the accepted proposals followed by the target's own token (1..n+1 tokens)
    and (if asked) each token's logprob and top-n under the target's raw distribution."""

    @property
    def num_accepted(self) -> list[int]:
        """Proposals accepted per row."""
        return [len(tokens) - 1 for tokens in self.token_ids]


def verify(logits: torch.Tensor, vin: VerifyInput) -> VerifyOutput:
    """logits: [batch, k + 1, vocab], the target's logits at every column of the verify
    step (rows left-padded) -> the tokens each row emits."""
    batch, num_cols, vocab = logits.shape
    k = num_cols - 1
    n = vin.num_draft_tokens
    d = vin.draft_token_ids
    s = vin.sampling
    cols = torch.arange(num_cols, device=logits.device)
    # Left-align each row's target distributions: aligned[b, j] is p_j of row b.
    source = (num_cols - 1 - n[:, None] + cols[None, :]).clamp(max=num_cols - 1)
    aligned = logits.float().gather(1, source[:, :, None].expand(batch, num_cols, vocab))
    greedy, probs = process_logits(aligned.reshape(batch * num_cols, vocab), s)
    greedy = greedy.view(batch, num_cols)
    accept = d == greedy[:, :k]
    is_greedy_row = s.temperature.view(batch, num_cols)[:, 0] == 0
    if probs is not None:
        probs = probs.view(batch, num_cols, vocab)
        accept = torch.where(is_greedy_row[:, None], accept, _accept_tests(probs, vin))
    accept &= cols[None, :k] < n[:, None]
    num_accepted = accept.long().cumprod(dim=1).sum(dim=1)  # [batch]
    nxt = greedy.gather(1, num_accepted[:, None])[:, 0]
    if probs is not None:
        sampled = _draw_next(probs, num_accepted, vin)
        nxt = torch.where(is_greedy_row, nxt, sampled)
    emitted = torch.cat([d, torch.zeros_like(nxt)[:, None]], dim=1)
    emitted.scatter_(1, num_accepted[:, None], nxt[:, None])  # [batch, k + 1]
    host = torch.cat([num_accepted[:, None], emitted], dim=1).tolist()  # one host sync
    counts = [row[0] for row in host]
    token_ids = [row[1 : a + 2] for row, a in zip(host, counts, strict=True)]
    logprobs = _logprobs(aligned, emitted, counts, s.num_logprobs) if s.want_logprobs else None
    return VerifyOutput(token_ids, logprobs)


def _accept_tests(probs: torch.Tensor, vin: VerifyInput) -> torch.Tensor:
    """[batch, k] bool: u < p_j(d_{j+1}) / q_j(d_{j+1}), u uniform from the accept stream."""
    batch, num_cols, _ = probs.shape
    k = num_cols - 1
    d = vin.draft_token_ids
    p_d = probs[:, :k].gather(2, d[:, :, None])[..., 0]
    if vin.draft_probs is None:
        ratio = p_d
    else:
        q_d = vin.draft_probs.gather(2, d[:, :, None])[..., 0]
        ratio = p_d / q_d.clamp(min=torch.finfo(q_d.dtype).tiny)
    s = vin.sampling
    seeds = s.seeds.view(batch, num_cols)[:, :k].reshape(-1)
    counters = s.counters.view(batch, num_cols)[:, :k].reshape(-1)
    u = uniform_noise(seeds ^ ACCEPT_SALT, counters, 1).view(batch, k)
    return u < ratio


def _draw_next(probs: torch.Tensor, num_accepted: torch.Tensor, vin: VerifyInput):
    """The token after the accepted prefix: from the residual at a rejection, else the
    bonus from p_n. [batch]"""
    batch, num_cols, _ = probs.shape
    rows = torch.arange(batch, device=probs.device)
    p_a = probs[rows, num_accepted]  # [batch, vocab]
    at = num_accepted.clamp(max=num_cols - 2)  # the rejected proposal's index, when rejected
    if vin.draft_probs is None:
        residual = p_a.scatter(1, vin.draft_token_ids[rows, at][:, None], 0.0)
    else:
        residual = (p_a - vin.draft_probs[rows, at]).clamp(min=0.0)
    is_rejected = num_accepted < vin.num_draft_tokens
    # NOTE: a rejection implies p(d) < q(d), so the residual has mass; the guard is for
    # float rounding only.
    has_mass = residual.sum(dim=-1) > 0
    weights = torch.where((is_rejected & has_mass)[:, None], residual, p_a)
    s = vin.sampling
    seeds = s.seeds.view(batch, num_cols)[:, 0]
    counters = s.counters.view(batch, num_cols)[:, 0] + num_accepted
    return race(weights, seeds, counters)


def _logprobs(aligned: torch.Tensor, emitted: torch.Tensor, counts: list[int], num_top: int):
    logp = aligned.log_softmax(dim=-1)  # raw distribution, as plain sampling reports
    chosen = logp.gather(2, emitted[:, :, None])[..., 0].tolist()
    if num_top:
        top_vals, top_ids = logp.topk(num_top, dim=-1)
        top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
    out = []
    for b, a in enumerate(counts):
        row = []
        for j in range(a + 1):
            top = list(zip(top_ids[b][j], top_vals[b][j], strict=True)) if num_top else []
            row.append((chosen[b][j], top))
        out.append(row)
    return out
