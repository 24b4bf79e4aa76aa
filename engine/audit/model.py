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
    prepared outside the traced callable, as the runner does before a graph replay.
    A multimodal model's callable first encodes an image at its largest patch bucket and
    builds the prefill's image inputs, and the prefill takes its features."""
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
    inputs = [dummy_model_input(shape) for shape in shapes]
    is_cross = engine.family.cross_attention is not None
    if engine.image_feeder is not None:
        feed = cross_image_feed if is_cross else image_feed
        inputs[0].multi_modal = feed(engine, inputs[0])
        with torch.inference_mode():
            runner.run_image_encoders(inputs[0].multi_modal)  # for the prepared inputs
    steps = [runner.prepare_inputs(inp) for inp in inputs]

    def run() -> None:
        with torch.inference_mode():
            if engine.image_feeder is not None:
                runner.run_image_encoders(inputs[0].multi_modal)
                if not is_cross:
                    runner.prepare_image_inputs(inputs[0])
            for step in steps:
                runner.run_forward(**step)

    return runner.model, run


def image_feed(engine, inp):
    """A feed encoding one image of the largest patch bucket (zeros) whose features take
    the prefill's first query positions."""
    from engine.messages import ImageEncode, MultiModalFeed

    buckets = engine.patch_buckets
    bucket = max(buckets.counts)
    pixels = torch.zeros((bucket, *buckets.patch_shape))
    image_hash = 1
    with torch.inference_mode():
        num_tokens = engine.executor.runner.encode_image(
            engine.executor.runner.model, pixels, bucket, buckets.sizes[bucket]
        ).shape[0]
    batch, q_len = inp.input_ids.shape
    index = torch.zeros(batch * q_len, dtype=torch.long)
    n = min(num_tokens, batch * q_len)
    index[:n] = torch.arange(1, n + 1)
    encode = ImageEncode(image_hash, pixels, bucket, buckets.sizes[bucket], num_tokens)
    mask = (index > 0).view(batch, q_len)
    return MultiModalFeed([encode], [image_hash], index, mask, [])


def cross_image_feed(engine, inp):
    """A cross-attention model's feed encoding one image of max_num_tiles tiles (zeros)
    into pool slot 0, which every row of the prefill reads at every position."""
    from engine.messages import CrossAttentionFeed, CrossImageEncode

    buckets = engine.patch_buckets
    tiles = max(buckets.counts)
    batch, q_len = inp.input_ids.shape
    encode = CrossImageEncode(0, torch.zeros((tiles, *buckets.patch_shape)), tiles, 1)
    return CrossAttentionFeed(
        [encode],
        torch.zeros(batch, dtype=torch.long),
        torch.ones(batch),
        torch.ones((batch, q_len, 1, tiles)),
    )


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
