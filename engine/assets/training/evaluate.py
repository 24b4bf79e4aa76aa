"""Held-out figures: per-token perplexity of each model and draft/target greedy agreement."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

EVAL_BATCH_SEQS = 16


@dataclass(frozen=True)
class HeldOutReport:
    """Figures over ``num_tokens`` predicted held-out positions (fp32 inference)."""

    num_tokens: int
    target_perplexity: float
    draft_perplexity: float
    greedy_agreement: float  # fraction of positions where both models' argmax agree


@torch.inference_mode()
def evaluate_held_out(
    target: LlamaForCausalLM, draft: LlamaForCausalLM, windows: torch.Tensor
) -> HeldOutReport:
    """Score both models on ``windows``: ``[num_windows, seq_len]`` token ids.

    Every window predicts its positions 1..seq_len-1 from its own prefix only.
    """
    target_nll = draft_nll = 0.0
    num_agree = num_tokens = 0
    for batch in windows.split(EVAL_BATCH_SEQS):
        labels = batch[:, 1:].flatten()
        target_logits = target(input_ids=batch).logits[:, :-1].flatten(0, 1).float()
        draft_logits = draft(input_ids=batch).logits[:, :-1].flatten(0, 1).float()
        target_nll += F.cross_entropy(target_logits, labels, reduction="sum").item()
        draft_nll += F.cross_entropy(draft_logits, labels, reduction="sum").item()
        num_agree += int((target_logits.argmax(-1) == draft_logits.argmax(-1)).sum())
        num_tokens += labels.numel()
    return HeldOutReport(
        num_tokens=num_tokens,
        target_perplexity=math.exp(target_nll / num_tokens),
        draft_perplexity=math.exp(draft_nll / num_tokens),
        greedy_agreement=num_agree / num_tokens,
    )
