"""Audit a model directory: load it, pick the forward to run, trace it.

`audit_model` loads with transformers and, by default, runs transformers' own forward
(`transformers_forward`: one prefill, one decode over a DynamicCache). The forward is a
parameter (`make_forward(model) -> fn`) so the engine's prefill + decode steps over the
paged cache can be audited the same way once the model runner exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from engine.audit.report import AuditReport
from engine.audit.tracer import audit_forward

__all__ = ["audit_model", "transformers_forward"]

ForwardFactory = Callable[[torch.nn.Module], Callable[[], object]]


def transformers_forward(
    model: torch.nn.Module, *, batch_size: int = 2, prompt_len: int = 16, seed: int = 0
) -> Callable[[], None]:
    """A callable running one prefill forward over [batch_size, prompt_len] random tokens
    and one decode forward of one token per row, reusing the prefill's DynamicCache, with
    an all-ones attention mask as `generate` passes it. Inputs are built here, untraced."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    # input_ids: [batch, prompt_len]; masks: [batch, tokens so far]
    input_ids = torch.randint(
        model.config.vocab_size, (batch_size, prompt_len), generator=generator
    )
    input_ids = input_ids.to(device)
    prefill_mask = torch.ones_like(input_ids)
    decode_mask = torch.ones(batch_size, prompt_len + 1, dtype=torch.long, device=device)

    def run() -> None:
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=prefill_mask, past_key_values=cache)
            next_ids = out.logits[:, -1:].argmax(dim=-1)  # [batch, 1], stays on the device
            model(input_ids=next_ids, attention_mask=decode_mask, past_key_values=cache)

    return run


def audit_model(
    model_path: str | os.PathLike | None = None,
    *,
    make_forward: ForwardFactory = transformers_forward,
) -> AuditReport:
    """Load the model at `model_path` (None = the bundled default model) in fp32 with
    SDPA attention, on the CPU, and audit the forward `make_forward(model)` returns.

    Raises FileNotFoundError when `model_path` is not a local directory (no hub look-up).
    """
    from transformers import AutoModelForCausalLM

    if model_path is None:
        from engine.assets import default_model_path

        model_path = default_model_path()
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"model_path must be a local model directory, got {model_path!r}")
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    )
    model.eval()
    return audit_forward(model, make_forward(model))
