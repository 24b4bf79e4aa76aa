"""Finding, checking and loading models and tokenizers (local files only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from engine.attention import ATTN_IMPLEMENTATION
from engine.config import DTYPE_NAMES
from engine.families import check_tp_size, get_family
from engine.family_features import check_config

# engine.config.DTYPE_NAMES -> torch dtype
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
# engine.config.KV_CACHE_DTYPE_CHOICES -> the torch dtype the KV cache stores ("auto": the
# model's dtype). engine.attention quantizes into it and computes in the model's dtype.
KV_CACHE_TORCH_DTYPES = {"fp8": torch.float8_e4m3fn}


def resolve_model_path(model: str | Path | None) -> Path:
    """None -> the default model; a local directory with a config.json; else the name of a
    model gaudi-serve provides (engine.assets.MODEL_NAMES, e.g. ``pycoder-draft``)."""
    from engine.assets import MODEL_NAMES, default_model_path

    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path
    if str(model) in MODEL_NAMES:
        return default_model_path(str(model))
    raise FileNotFoundError(
        f"model {str(model)!r} is neither a local model directory (no config.json there) "
        f"nor a model gaudi-serve provides ({', '.join(MODEL_NAMES)}); "
        "gaudi-serve never downloads weights"
    )


def load_config(path: Path) -> PretrainedConfig:
    """The model's config; UnsupportedModelError unless its family is in engine.families
    and the engine implements every feature it uses (engine.family_features)."""
    config = AutoConfig.from_pretrained(path)
    check_config(config, where=path)
    return config


@dataclass(frozen=True)
class KVSpec:
    """Shape of one rank's KV cache per token: layers x kv heads x head_dim, stored as
    `cache_dtype` (None = `dtype`, the model's, which attention computes in)."""

    num_layers: int
    num_kv_heads: int  # on this rank
    head_dim: int
    dtype: torch.dtype
    cache_dtype: torch.dtype | None = None

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig,
        dtype: torch.dtype,
        tp_size: int = 1,
        kv_cache_dtype: str = "auto",
    ):
        """kv_cache_dtype: an EngineConfig.kv_cache_dtype. Raises for a tp_size the model
        cannot be split by: one that does not divide its KV heads, or > 1 for a family
        tensor parallelism does not run."""
        check_tp_size(config.model_type, tp_size)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if kv_heads % tp_size:
            raise ValueError(
                f"tp_size {tp_size} does not divide the model's {kv_heads} KV heads; "
                f"valid tp_size values: {[d for d in range(1, kv_heads + 1) if kv_heads % d == 0]}"
            )
        if kv_cache_dtype != "auto" and kv_cache_dtype not in KV_CACHE_TORCH_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {['auto', *KV_CACHE_TORCH_DTYPES]}, "
                f"got {kv_cache_dtype!r}"
            )
        cache_dtype = KV_CACHE_TORCH_DTYPES.get(kv_cache_dtype)
        return cls(config.num_hidden_layers, kv_heads // tp_size, head_dim, dtype, cache_dtype)

    @property
    def storage_dtype(self) -> torch.dtype:
        """What the K and V pools hold."""
        return self.cache_dtype or self.dtype

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token over every layer: 1 byte an element in fp8, whose scale is
        fixed (engine.attention.quantize_kv), so nothing is stored per token or block."""
        itemsize = torch.finfo(self.storage_dtype).bits // 8
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize


def resolve_dtype(name: str, config: PretrainedConfig, device) -> torch.dtype:
    if name != "auto":
        return TORCH_DTYPES[name]
    config_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(config_dtype, str):
        config_dtype = TORCH_DTYPES.get(config_dtype)
    return device.default_dtype(config_dtype)


def load_model(
    path: Path,
    dtype: torch.dtype,
    device: torch.device,
    quantization: str | None = None,
    quantization_stats: str | Path | None = None,
) -> torch.nn.Module:
    """The model with its weights, built by its family's class and `patch_model` hook,
    then its weights quantized on the device (engine.quant; None = as loaded)."""
    # NOTE: load_config runs the family's config hooks, which import its engine.models
    # module: Falcon's registers its attention class there, before transformers builds it.
    family = get_family(load_config(path).model_type)
    model = family.model_class().from_pretrained(
        path, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION
    )
    model = family.patch_model(model)
    model = model.to(device).eval().requires_grad_(False)
    if quantization is None:
        return model
    from engine.quant import quantize_model

    return quantize_model(model, quantization, dtype, quantization_stats)


def load_tokenizer(path: Path):
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"no tokenizer could be loaded from {path} ({exc}); pass tokenizer=PATH, or "
            "skip_tokenizer_init=True to work with token ids only"
        ) from exc
