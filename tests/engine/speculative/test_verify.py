"""The verification rule on synthetic distributions: greedy rows keep exactly the target's
argmax chain, and sampled rows emit tokens distributed exactly as the target's p (rejection
sampling against a draft's q, or against an n-gram's point mass), checked in total
variation over many independently seeded rows."""

from __future__ import annotations

import torch

from engine.messages import SamplingInput
from engine.speculative.verify import VerifyInput, verify

VOCAB = 8


def sampling(rows: int, temperature: float, top_k: int = 0, seed_base: int = 0) -> SamplingInput:
    """Flattened verify sampling rows: row b * cols + j has seed b and counter j."""
    return SamplingInput(
        temperature=torch.full((rows,), temperature),
        top_k=torch.full((rows,), top_k, dtype=torch.long),
        top_p=torch.ones(rows),
        repetition_penalty=torch.ones(rows),
        seeds=torch.zeros(rows, dtype=torch.long),
        counters=torch.zeros(rows, dtype=torch.long),
        history=None,
        num_logprobs=0,
        want_logprobs=False,
        is_all_greedy=temperature == 0,
        needs_filters=top_k > 0,
    )


def make_input(batch, k, drafts, num_drafts, draft_probs, temperature, top_k=0, seed_base=0):
    s = sampling(batch * (k + 1), temperature, top_k)
    s.seeds = (torch.arange(batch) + seed_base).repeat_interleave(k + 1)
    s.counters = torch.arange(k + 1).repeat(batch)
    return VerifyInput(drafts, num_drafts, draft_probs, s)


def total_variation(tokens: torch.Tensor, expected: torch.Tensor) -> float:
    freq = torch.bincount(tokens, minlength=expected.numel()).float() / tokens.numel()
    return 0.5 * (freq - expected).abs().sum().item()


def test_greedy_accepts_the_matching_prefix_then_the_targets_token():
    # target argmax per column: row 0 -> 5, 6, 7; row 1 (one proposal, left-padded) -> _, 2, 3
    logits = torch.zeros(2, 3, VOCAB)
    for row, col, tok in [(0, 0, 5), (0, 1, 6), (0, 2, 7), (1, 1, 2), (1, 2, 3)]:
        logits[row, col, tok] = 5.0
    drafts = torch.tensor([[5, 1], [2, 0]])
    out = verify(logits, make_input(2, 2, drafts, torch.tensor([2, 1]), None, temperature=0))
    assert out.token_ids == [[5, 6], [2, 3]]
    assert out.num_accepted == [1, 1]
    all_right = verify(
        logits, make_input(2, 2, torch.tensor([[5, 6], [2, 0]]), torch.tensor([2, 0]), None, 0)
    )
    assert all_right.token_ids == [[5, 6, 7], [3]]  # row 1 proposed nothing: plain decode


def run_rows(n, k, p_logits, q, temperature=1.0, top_k=0, point_mass=None):
    """n rows verifying the same p and q, drafts drawn from q (or a fixed token)."""
    g = torch.Generator().manual_seed(7)
    if point_mass is None:
        drafts = torch.stack([torch.multinomial(q[j], n, True, generator=g) for j in range(k)], 1)
        draft_probs = q[None].expand(n, k, VOCAB).contiguous()
    else:
        drafts = torch.full((n, k), point_mass, dtype=torch.long)
        draft_probs = None
    vin = make_input(n, k, drafts, torch.full((n,), k), draft_probs, temperature, top_k)
    return verify(p_logits[None].expand(n, k + 1, VOCAB).contiguous(), vin)


def target_probs(logits, temperature=1.0, top_k=0):
    scaled = logits / temperature
    if top_k:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return scaled.softmax(-1)


def test_rejection_sampling_follows_the_target_distribution():
    torch.manual_seed(0)
    p_logits = torch.randn(3, VOCAB) * 1.5
    q = torch.randn(2, VOCAB).mul(1.5).softmax(-1)
    n = 40000
    out = run_rows(n, 2, p_logits, q)
    p = target_probs(p_logits)
    first = torch.tensor([t[0] for t in out.token_ids])
    second = torch.tensor([t[1] for t in out.token_ids if len(t) >= 2])
    assert total_variation(first, p[0]) < 0.015
    assert total_variation(second, p[1]) < 0.02
    # the acceptance of the first proposal is sum(min(p, q)), the rule's optimum
    accepted_first = sum(a >= 1 for a in out.num_accepted) / n
    assert abs(accepted_first - torch.minimum(p[0], q[0]).sum().item()) < 0.015
    rejected = [t for t, a in zip(out.token_ids, out.num_accepted, strict=True) if a == 0]
    assert 0 < len(rejected) < n  # both paths taken


def test_processing_applies_to_target_and_residual_alike():
    torch.manual_seed(1)
    p_logits = torch.randn(2, VOCAB) * 2
    q = torch.randn(1, VOCAB).softmax(-1)  # mass outside the target's top-4 too
    out = run_rows(30000, 1, p_logits, q, temperature=0.7, top_k=4)
    first = torch.tensor([t[0] for t in out.token_ids])
    assert total_variation(first, target_probs(p_logits, 0.7, 4)[0]) < 0.015


def test_point_mass_proposals_follow_the_target_distribution():
    torch.manual_seed(2)
    p_logits = torch.randn(3, VOCAB)
    n = 40000
    out = run_rows(n, 2, p_logits, q=None, point_mass=3)
    p = target_probs(p_logits)
    first = torch.tensor([t[0] for t in out.token_ids])
    assert total_variation(first, p[0]) < 0.015
    assert abs(sum(a >= 1 for a in out.num_accepted) / n - p[0, 3].item()) < 0.015


def test_seeded_rows_reproduce():
    torch.manual_seed(3)
    p_logits = torch.randn(3, VOCAB)
    q = torch.randn(2, VOCAB).softmax(-1)
    a = run_rows(64, 2, p_logits, q)
    b = run_rows(64, 2, p_logits, q)
    assert a.token_ids == b.token_ids
