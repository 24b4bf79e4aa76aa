"""config.json of nine public models, written from their published dimensions (no weights).

The dicts repeat the fields of each model's config.json on the Hugging Face Hub that decide
its size; `write_configs(root)` writes them as root/<name>/config.json. Run as a script to
write them for `gaudi-serve plan` (see sharding/PLANNER.md):

    python tests/sharding/published_configs.py /tmp/planner-configs
"""

from __future__ import annotations

import json
import pathlib
import sys

_LLAMA_3_1 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}

PUBLISHED_CONFIGS: dict[str, dict] = {
    "Llama-3.1-8B": {
        **_LLAMA_3_1,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
    },
    "Llama-3.1-70B": {
        **_LLAMA_3_1,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_attention_heads": 64,
        "num_hidden_layers": 80,
        "num_key_value_heads": 8,
    },
    "Llama-3.1-405B": {
        **_LLAMA_3_1,
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "num_attention_heads": 128,
        "num_hidden_layers": 126,
        "num_key_value_heads": 8,
    },
    "Mixtral-8x7B": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 32000,
    },
    "Qwen2-72B": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "max_position_embeddings": 131072,
        "max_window_layers": 80,
        "num_attention_heads": 64,
        "num_hidden_layers": 80,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_sliding_window": False,
        "vocab_size": 152064,
    },
    # Falcon's config.json has no intermediate_size (the MLP is 4 * hidden_size, not gated)
    # and no tie_word_embeddings (FalconConfig's default ties lm_head to the embedding).
    "Falcon-180B": {
        "architectures": ["FalconForCausalLM"],
        "model_type": "falcon",
        "alibi": False,
        "bias": False,
        "hidden_size": 14848,
        "multi_query": True,
        "new_decoder_architecture": True,
        "num_attention_heads": 232,
        "num_hidden_layers": 80,
        "num_kv_heads": 8,
        "parallel_attn": True,
        "torch_dtype": "bfloat16",
        "vocab_size": 65024,
    },
    # StarCoder2's MLP is c_fc/c_proj (not gated); its lm_head is its own matrix.
    "StarCoder2-15B": {
        "architectures": ["Starcoder2ForCausalLM"],
        "model_type": "starcoder2",
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 6144,
        "intermediate_size": 24576,
        "max_position_embeddings": 16384,
        "norm_epsilon": 1e-05,
        "num_attention_heads": 48,
        "num_hidden_layers": 40,
        "num_key_value_heads": 4,
        "rope_theta": 100000,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_bias": True,
        "vocab_size": 49152,
    },
    # The original StarCoder (gpt_bigcode): GPT-2 key names, multi-query attention (one KV
    # head), the MLP width in n_inner; lm_head tied to the embedding (the class default).
    "StarCoder": {
        "architectures": ["GPTBigCodeForCausalLM"],
        "model_type": "gpt_bigcode",
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-05,
        "multi_query": True,
        "n_embd": 6144,
        "n_head": 48,
        "n_inner": 24576,
        "n_layer": 40,
        "n_positions": 8192,
        "torch_dtype": "float32",
        "vocab_size": 49152,
    },
    # Phi-2: full multi-head attention with 40% of each head rotated, fc1/fc2 MLP.
    "Phi-2": {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "hidden_act": "gelu_new",
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "partial_rotary_factor": 0.4,
        "qk_layernorm": False,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "vocab_size": 51200,
    },
}

# Parameter counts the model cards and papers publish, in billions.
PUBLISHED_NUM_PARAMS_B: dict[str, float] = {
    "Llama-3.1-8B": 8.03,
    "Llama-3.1-70B": 70.6,
    "Llama-3.1-405B": 405.9,
    "Mixtral-8x7B": 46.7,
    "Qwen2-72B": 72.7,
    "Falcon-180B": 179.5,
    "StarCoder2-15B": 16.0,  # the Hub's count of the safetensors (the card says 15 B)
    "StarCoder": 15.5,
    "Phi-2": 2.78,  # the Hub's count (Microsoft's announcement rounds to 2.7 B)
}


def write_configs(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Write every PUBLISHED_CONFIGS entry to root/<name>/config.json; return name -> dir."""
    model_dirs = {}
    for name, config in PUBLISHED_CONFIGS.items():
        model_dir = pathlib.Path(root) / name
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.json").write_text(json.dumps(config, indent=2))
        model_dirs[name] = model_dir
    return model_dirs


if __name__ == "__main__":
    for path in write_configs(pathlib.Path(sys.argv[1])).values():
        print(path)
