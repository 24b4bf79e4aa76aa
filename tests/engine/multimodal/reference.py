"""transformers' own LlavaNextForConditionalGeneration.generate: the reference."""

from __future__ import annotations

import torch

_models: dict[str, object] = {}


def hf_llava_greedy(processor, model_dir, prompt: str, images: list, max_new_tokens: int):
    """Greedy fp32 tokens of transformers' generate for one prompt with its images (the
    same processor outputs the engine gets), no EOS stop."""
    from transformers import LlavaNextForConditionalGeneration

    model = _models.get(str(model_dir))
    if model is None:
        model = LlavaNextForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        _models[str(model_dir)] = model.eval()
    inputs = processor.hf_processor(text=prompt, images=images or None, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()
