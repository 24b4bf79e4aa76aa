"""Sampling on the device: one batched call for the whole step, per-row parameters.

Random draws come from a counter-based hash of (seed, tokens generated so far, vocab id)
instead of a stateful generator, so a seeded request samples the same tokens whatever
else is in the batch, and after a preemption. Sampling uses the exponential race
(argmax p_i / E_i with E_i ~ Exp(1)), which draws exactly from p without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.messages import SamplingInput, StepOutput, TokenLogprobs

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


@dataclass
class SamplerOutput:
    """One sampled token per row and, when any row asked, its `TokenLogprobs`."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs] | None = None

    def as_step_output(self) -> StepOutput:
        """The step contract's form: each row accepted its one token."""
        logprobs = None if self.logprobs is None else [[lp] for lp in self.logprobs]
        return StepOutput([[t] for t in self.token_ids], logprobs)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[batch, vocab] uniforms in (0, 1), a pure function of (seed, counter, token id)."""
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    key = _mix32(lo ^ _mix32(hi ^ _mix32(counters & _MASK32)))
    ids = torch.arange(vocab_size, device=seeds.device, dtype=torch.long)
    x = _mix32((key[:, None] + ids[None, :] * _GOLDEN) & _MASK32)
    return ((x >> 8).float() + 0.5) / float(1 << 24)


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: torch.Tensor):
    """HF semantics: seen tokens' positive logits are divided by the penalty, negative
    ones multiplied. history: [batch, len] token ids, -1 = none."""
    seen = torch.zeros_like(logits, dtype=torch.bool)
    valid = history >= 0
    seen.scatter_(1, history.clamp(min=0), valid)
    factor = torch.where(logits > 0, 1.0 / penalty[:, None], penalty[:, None])
    return torch.where(seen, logits * factor, logits)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor):
    """Mask logits outside each row's top-k and top-p nucleus (top_k 0 = off)."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab)[:, None]
    sorted_logits = sorted_logits.masked_fill(rank >= k, float("-inf"))
    # top-p applies to the distribution renormalised after top-k (as transformers does).
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # The top token always stays: its mass_before is 0.
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p[:, None], float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def process_logits(
    logits: torch.Tensor, inp: SamplingInput
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits: [batch, vocab] -> (greedy tokens [batch], probs [batch, vocab] after the
    repetition penalty, temperature, top-k and top-p; None when every row is greedy)."""
    logits = logits.float()
    if inp.history is not None:
        logits = apply_repetition_penalty(logits, inp.history, inp.repetition_penalty)
    greedy = logits.argmax(dim=-1)
    if inp.is_all_greedy:
        return greedy, None
    scaled = logits / inp.temperature[:, None].clamp(min=1e-5)
    if inp.needs_filters:
        scaled = apply_top_k_top_p(scaled, inp.top_k, inp.top_p)
    return greedy, scaled.softmax(dim=-1)


def race(weights: torch.Tensor, seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One draw per row from weights [batch, vocab] (non-negative, any scale): the token
    with the largest weight / E, E ~ Exp(1) from the row's (seed, counter) noise."""
    exp_noise = -torch.log(uniform_noise(seeds, counters, weights.shape[-1]))
    return (weights / exp_noise).argmax(dim=-1)


def sample(logits: torch.Tensor, inp: SamplingInput) -> SamplerOutput:
    """logits: [batch, vocab] -> one token per row (and logprobs if any row asked)."""
    raw = logits.float()
    tokens, probs = process_logits(raw, inp)
    if probs is not None:
        sampled = race(probs, inp.seeds, inp.counters)
        tokens = torch.where(inp.temperature > 0, sampled, tokens)
    token_list = tokens.tolist()
    if not inp.want_logprobs:
        return SamplerOutput(token_list)
    return SamplerOutput(token_list, _logprobs(raw, tokens, inp.num_logprobs))


def _logprobs(raw: torch.Tensor, tokens: torch.Tensor, num_top: int):
    logp = raw.log_softmax(dim=-1)
    chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()
    if num_top:
        top_vals, top_ids = logp.topk(num_top, dim=-1)
        tops = [
            list(zip(i, v, strict=True))
            for i, v in zip(top_ids.tolist(), top_vals.tolist(), strict=True)
        ]
    else:
        tops = [[] for _ in chosen]
    return [(c, t) for c, t in zip(chosen, tops, strict=True)]
