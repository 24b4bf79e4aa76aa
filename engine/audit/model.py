"""Audit a model directory: load it, pick the forward to run, trace it.

Two forwards can be audited:
- "engine" (default): the engine's own padded prefill and decode steps over the paged
  KV cache, exactly what the model runner replays as graphs;
- "transformers": transformers' forward (one prefill, one decode over a DynamicCache),
  to see what the engine had to replace.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from engine.audit.report import AuditReport
from engine.audit.tracer import audit_forward

__all__ = ["FORWARDS", "audit_model", "engine_forward", "transformers_forward"]

FORWARDS = ("engine", "transformers")

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


def engine_forward(model_path: str | os.PathLike) -> tuple[torch.nn.Module, Callable[[], None]]:
    """The engine's model (paged attention) and a callable running one prefill step
    (2 rows x 16 tokens) and one decode step (2 rows) at their bucket shapes. Inputs are
    prepared outside the traced callable, as the runner does before a graph replay."""
    from engine.config import EngineConfig
    from engine.llm_engine import Engine
    from engine.model_input import dummy_model_input

    engine = Engine(
        EngineConfig(
            model=str(model_path),
            device="cpu",
            dtype="float32",
            skip_tokenizer_init=True,
            warmup=False,
            max_num_seqs=4,
            max_model_len=256,
            kv_cache_tokens=1024,
        )
    )
    runner = engine.executor.runner
    shapes = [engine.shaper.prefill_shape(2, 16, 1), engine.shaper.decode_shape(2, 2)]
    steps = [runner.prepare_inputs(dummy_model_input(shape)) for shape in shapes]

    def run() -> None:
        with torch.inference_mode():
            for inputs in steps:
                runner.run_forward(**inputs)

    return runner.model, run


def audit_model(
    model_path: str | os.PathLike | None = None,
    *,
    forward: str = "engine",
    make_forward: ForwardFactory = transformers_forward,
) -> AuditReport:
    """Audit `forward` ("engine" or "transformers", see FORWARDS) of the model at
    `model_path` (None = the bundled default model), fp32 on the CPU. For "transformers"
    the model loads with SDPA attention and `make_forward(model)` gives the callable.

    Raises FileNotFoundError when `model_path` is not a local directory (no hub look-up).
    """
    from transformers import AutoModelForCausalLM

    if forward not in FORWARDS:
        raise ValueError(f"forward must be one of {list(FORWARDS)}, got {forward!r}")
    if model_path is None:
        from engine.assets import default_model_path

        model_path = default_model_path()
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"model_path must be a local model directory, got {model_path!r}")
    if forward == "engine":
        return audit_forward(*engine_forward(model_path))
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    )
    model.eval()
    return audit_forward(model, make_forward(model))
