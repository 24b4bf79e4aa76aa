"""The batched sampler: filters, penalties and the exponential race draw from the right
distribution, and seeded noise depends only on (seed, counter)."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from engine.messages import SamplingInput
from engine.sampler import (
    apply_repetition_penalty,
    apply_top_k_top_p,
    sample,
    uniform_noise,
)


def sampling_input(batch, temperature=1.0, top_k=0, top_p=1.0, seeds=None, counters=None):
    return SamplingInput(
        temperature=torch.full((batch,), float(temperature)),
        top_k=torch.full((batch,), top_k, dtype=torch.long),
        top_p=torch.full((batch,), float(top_p)),
        repetition_penalty=torch.ones(batch),
        seeds=torch.arange(batch, dtype=torch.long) if seeds is None else seeds,
        counters=torch.zeros(batch, dtype=torch.long) if counters is None else counters,
        history=None,
        num_logprobs=0,
        want_logprobs=False,
        is_all_greedy=temperature == 0,
        needs_filters=top_k > 0 or top_p < 1.0,
    )


def test_top_k_top_p_match_transformers_warpers():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    ours = apply_top_k_top_p(logits, torch.full((4,), 10), torch.full((4,), 0.8))
    theirs = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, logits.clone()))
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])


def test_repetition_penalty_matches_transformers():
    torch.manual_seed(0)
    logits = torch.randn(2, 30)
    history = torch.tensor([[1, 5, 7, -1], [2, 2, 29, 0]])
    ours = apply_repetition_penalty(logits, history, torch.tensor([1.3, 1.3]))
    theirs = torch.stack(
        [
            RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([[1, 5, 7]]), logits[:1].clone())[0],
            RepetitionPenaltyLogitsProcessor(1.3)(
                torch.tensor([[2, 2, 29, 0]]), logits[1:].clone()
            )[0],
        ]
    )
    assert torch.allclose(ours, theirs)


def test_noise_depends_only_on_seed_and_counter():
    a = uniform_noise(torch.tensor([7, 8]), torch.tensor([3, 3]), 100)
    b = uniform_noise(torch.tensor([9, 7]), torch.tensor([0, 3]), 100)
    assert torch.equal(a[0], b[1]) and not torch.equal(a[0], a[1])
    assert a.min() > 0 and a.max() < 1


def test_exponential_race_follows_the_distribution():
    """Empirical frequencies over 20k independent draws are within 0.02 in total
    variation of softmax(logits / T), with top-k applied."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 20000
    inp = sampling_input(n, temperature=0.8, top_k=4, counters=torch.arange(n))
    inp.seeds = torch.full((n,), 1234, dtype=torch.long)
    tokens = torch.tensor(sample(logits.expand(n, -1).clone(), inp).token_ids)
    freq = torch.bincount(tokens, minlength=6).float() / n
    expected = torch.softmax(torch.cat([logits[:4] / 0.8, torch.full((2,), -torch.inf)]), 0)
    assert 0.5 * (freq - expected).abs().sum() < 0.02
    assert freq[4:].sum() == 0


def test_greedy_rows_ignore_noise():
    logits = torch.randn(3, 20)
    out = sample(logits.clone(), sampling_input(3, temperature=0))
    assert out.token_ids == logits.argmax(-1).tolist()
