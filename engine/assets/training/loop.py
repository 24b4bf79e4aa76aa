"""The training loop: AdamW, linear warmup then cosine decay, optional distillation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from engine.assets.training.recipes import ModelRecipe


@dataclass(frozen=True)
class TrainStats:
    """What one training run did; losses are per-token cross entropy (nats)."""

    num_steps: int
    num_tokens: int
    elapsed_s: float
    first_loss: float
    final_loss: float  # mean over the last 50 steps


def lr_at(step: int, recipe: ModelRecipe, max_steps: int) -> float:
    """Linear warmup to ``peak_lr``, then cosine down to ``min_lr_ratio * peak_lr``."""
    if step < recipe.num_warmup_steps:
        return recipe.peak_lr * (step + 1) / recipe.num_warmup_steps
    progress = (step - recipe.num_warmup_steps) / max(1, max_steps - recipe.num_warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return recipe.peak_lr * (recipe.min_lr_ratio + (1.0 - recipe.min_lr_ratio) * cosine)


def train_model(
    model: LlamaForCausalLM,
    batches: Iterator[torch.Tensor],
    recipe: ModelRecipe,
    max_steps: int,
    is_bf16_autocast: bool,
    teacher: LlamaForCausalLM | None = None,
    log: Callable[[str], None] = print,
) -> TrainStats:
    """Train ``model`` in place for ``max_steps`` steps (fp32 weights and optimiser state)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.peak_lr,
        betas=(0.9, 0.95),
    )
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe, max_steps)
        input_ids = next(batches)  # [batch, seq_len]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=is_bf16_autocast):
            loss, ce = _loss(model, input_ids, teacher, recipe.distill_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(ce)
        if step % 50 == 0 or step == max_steps - 1:
            elapsed_s = time.perf_counter() - started
            log(
                f"{recipe.name} step {step + 1}/{max_steps} ce {ce:.3f} "
                f"lr {lr_at(step, recipe, max_steps):.2e} "
                f"{(step + 1) * input_ids.numel() / elapsed_s:.0f} tok/s {elapsed_s:.0f}s"
            )
    model.eval()
    return TrainStats(
        num_steps=max_steps,
        num_tokens=max_steps * recipe.num_tokens_per_step,
        elapsed_s=time.perf_counter() - started,
        first_loss=losses[0],
        final_loss=sum(losses[-50:]) / len(losses[-50:]),
    )


def _loss(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    teacher: LlamaForCausalLM | None,
    distill_weight: float,
) -> tuple[torch.Tensor, float]:
    """The loss to minimise and its plain next-token cross entropy (for logging)."""
    logits = model(input_ids=input_ids).logits[:, :-1].float()  # [batch, seq_len - 1, vocab]
    log_probs = F.log_softmax(logits, dim=-1).flatten(0, 1)
    ce = F.nll_loss(log_probs, input_ids[:, 1:].flatten())
    if teacher is None or distill_weight == 0.0:
        return ce, ce.item()
    with torch.no_grad():
        teacher_logits = teacher(input_ids=input_ids).logits[:, :-1].float()
    teacher_log_probs = F.log_softmax(teacher_logits, dim=-1).flatten(0, 1)
    kl = F.kl_div(log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    return (1.0 - distill_weight) * ce + distill_weight * kl, ce.item()
