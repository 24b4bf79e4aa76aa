"""Prompt lookup: the longest recurring suffix wins, its latest earlier occurrence is used,
and no recurrence means no proposal."""

from __future__ import annotations

from engine import SamplingParams
from engine.sequence import Sequence
from engine.speculative.ngram import NgramProposer, propose_ngram


def test_longest_suffix_first():
    # suffix [7, 8] recurs at 0 (followed by 1); suffix [8] alone recurs later (followed by 9)
    tokens = [7, 8, 1, 2, 8, 9, 3, 7, 8]
    assert propose_ngram(tokens, 2, min_n=1, max_n=2) == [1, 2]
    assert propose_ngram(tokens, 2, min_n=1, max_n=1) == [9, 3]


def test_latest_occurrence_and_budget():
    tokens = [5, 1, 2, 5, 3, 4, 5]
    assert propose_ngram(tokens, 3, min_n=1, max_n=3) == [3, 4, 5]
    assert propose_ngram(tokens, 1, min_n=1, max_n=3) == [3]
    assert propose_ngram(tokens, 0, min_n=1, max_n=3) == []


def test_no_recurrence_or_too_short():
    assert propose_ngram([1, 2, 3, 4], 4, min_n=1, max_n=3) == []
    assert propose_ngram([1, 2, 1, 2], 4, min_n=3, max_n=3) == []
    assert propose_ngram([1], 4, min_n=1, max_n=3) == []
    # a run of one token proposes more of it, up to the end of what is known
    assert propose_ngram([4, 4, 4], 4, min_n=1, max_n=2) == [4]


def test_proposer_per_row_budgets():
    params = SamplingParams()
    seqs = [Sequence("a", [1, 2, 3, 1, 2], params, 0), Sequence("b", [6, 7], params, 0)]
    proposals, probs, sources = NgramProposer(1, 3).propose(seqs, [1, 4])
    assert proposals == [[3], []] and probs is None and sources == ["ngram", "ngram"]
