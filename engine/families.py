"""The model families the engine runs: one registry entry per Hugging Face `model_type`.

Each family says which transformers class builds it, whether tensor parallelism runs it,
and where it may swap in modules of its own (`patch_model`: for example a static-shape
mixture-of-experts layer in place of transformers' data-dependent one). A new family is
one `ModelFamily` in FAMILIES plus a tiny model in tests/conftest.py's FAMILY_CONFIGS;
each registered family is tested token-identical to transformers' `generate`.

This module imports neither torch nor transformers (the planner reads it too): classes
are named here and imported when a model is built.

>>> get_family("qwen2").name, get_family("qwen2").class_name
('Qwen2', 'Qwen2ForCausalLM')
>>> get_family("gpt2")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
engine.errors.UnsupportedModelError: model_type 'gpt2' is not supported; supported: Llama ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import UnsupportedModelError

__all__ = [
    "FAMILIES",
    "ModelFamily",
    "check_tp_size",
    "get_family",
    "imported",
    "keep_model",
    "supported_families_table",
    "supported_families_text",
]


def keep_model(model: Any) -> Any:
    """The default `patch_model`: the transformers model runs unchanged."""
    return model


def imported(module: str, name: str) -> Callable[[Any], Any]:
    """A family hook (`patch_model`, `unsupported_features`) that lives in `module` (under
    engine.models), imported when first called: the registry itself stays free of torch
    and transformers."""

    def patch(model: Any) -> Any:
        return getattr(importlib.import_module(module), name)(model)

    patch.__qualname__ = f"{module}.{name}"
    return patch


# The default `unsupported_features` hook: the checks every family shares.
SHARED_UNSUPPORTED_FEATURES = imported("engine.family_features", "shared_unsupported_features")


@dataclass(frozen=True)
class ModelFamily:
    """One model family.

    model_type: config.json's `model_type`.
    name: the family's display name.
    class_name: the transformers class that builds it (a causal LM).
    is_tp_supported: tensor parallelism (DeepSpeed AutoTP and sharding.loading) runs it;
        False refuses tp_size > 1 with an error naming the families that have it.
    is_tied_by_default: transformers' default of `tie_word_embeddings` for this family,
        used when config.json omits it (the planner counts lm_head parameters with it).
    patch_model: called with the built model before it runs (single device: after the
        weights are loaded; tensor parallel: on the meta device, before AutoTP shards it);
        returns the model to run. It may replace modules, and must keep parameter names so
        checkpoints still load. Default: `keep_model`.
    unsupported_features: called with the model's config when it is loaded; returns why
        the engine would not give transformers' output (one reason per feature it does not
        implement), and the model is refused naming them (engine.family_features).
        Default: the checks every family shares (ALiBi).
    """

    model_type: str
    name: str
    class_name: str
    is_tp_supported: bool = True
    is_tied_by_default: bool = False
    patch_model: Callable[[Any], Any] = keep_model
    unsupported_features: Callable[[Any], list[str]] = SHARED_UNSUPPORTED_FEATURES

    def model_class(self) -> type:
        """The transformers class (imports transformers)."""
        return getattr(importlib.import_module("transformers"), self.class_name)


# model_type -> family. Tensor parallelism: Llama, Mistral, Qwen2, Qwen3 and Gemma give
# output token-identical to tp_size 1 at tp_size 2, as do Mixtral (each expert's FFN split,
# tests/sharding/test_mixtral_tp.py), StarCoder2 and Phi-2
# (tests/sharding/test_code_families_tp.py); Phi-3's fused qkv_proj is split into
# ranks with zero heads (a reshape error at the first step), so it is refused up front.
FAMILIES: dict[str, ModelFamily] = {
    family.model_type: family
    for family in (
        ModelFamily("llama", "Llama", "LlamaForCausalLM"),
        ModelFamily("mistral", "Mistral", "MistralForCausalLM"),
        ModelFamily("qwen2", "Qwen2", "Qwen2ForCausalLM"),
        ModelFamily("qwen3", "Qwen3", "Qwen3ForCausalLM"),
        ModelFamily("gemma", "Gemma", "GemmaForCausalLM", is_tied_by_default=True),
        ModelFamily("phi3", "Phi-3", "Phi3ForCausalLM", is_tp_supported=False),
        ModelFamily(
            "mixtral",
            "Mixtral",
            "MixtralForCausalLM",
            patch_model=imported("engine.models.mixtral", "patch_model"),
        ),
        # Falcon: AutoTP cuts the fused query_key_value into whole KV groups (new decoder
        # architecture) or whole heads (multi-head); multi-query (one KV head) is refused by
        # its KV heads. Its config hook sets num_key_value_heads (engine.models.falcon).
        ModelFamily(
            "falcon",
            "Falcon",
            "FalconForCausalLM",
            is_tied_by_default=True,
            patch_model=imported("engine.models.falcon", "patch_model"),
            unsupported_features=imported("engine.models.falcon", "unsupported_features"),
        ),
        ModelFamily("starcoder2", "StarCoder2", "Starcoder2ForCausalLM", is_tied_by_default=True),
        # Tensor parallelism: AutoTP cuts the fused c_attn as [query | key+value replicated],
        # which is the multi-query layout only (a multi-head c_attn interleaves q/k/v per
        # head), and the attention splits c_attn's output by the full hidden size; multi-query
        # would also need the one KV head replicated on every rank's cache.
        ModelFamily(
            "gpt_bigcode",
            "StarCoder",
            "GPTBigCodeForCausalLM",
            is_tp_supported=False,
            is_tied_by_default=True,
            unsupported_features=imported("engine.models.gpt_bigcode", "unsupported_features"),
        ),
        ModelFamily("phi", "Phi-2", "PhiForCausalLM"),
    )
}


def supported_families_text(families: dict[str, ModelFamily] = FAMILIES) -> str:
    """`Llama (llama), Mistral (mistral), ...`: for error messages."""
    return ", ".join(f"{f.name} ({f.model_type})" for f in families.values())


def supported_families_table(families: dict[str, ModelFamily] = FAMILIES) -> str:
    """The families as a Markdown table, one row each: README.md holds it verbatim between
    `<!-- families:begin -->` and `<!-- families:end -->` (a test keeps the two equal).

    >>> print(supported_families_table({"llama": get_family("llama")}))
    | Family | `model_type` | transformers class | Tensor parallel |
    |---|---|---|---|
    | Llama | `llama` | `LlamaForCausalLM` | yes |
    """
    rows = [
        "| Family | `model_type` | transformers class | Tensor parallel |",
        "|---|---|---|---|",
    ]
    for f in families.values():
        tp = "yes" if f.is_tp_supported else "no"
        rows.append(f"| {f.name} | `{f.model_type}` | `{f.class_name}` | {tp} |")
    return "\n".join(rows)


def get_family(model_type: str, where: object = None) -> ModelFamily:
    """The family of `model_type`; UnsupportedModelError naming the supported ones (and
    `where` the model came from, when given)."""
    family = FAMILIES.get(model_type)
    if family is None:
        of = f" of {where}" if where is not None else ""
        raise UnsupportedModelError(
            f"model_type {model_type!r}{of} is not supported; "
            f"supported: {supported_families_text()}"
        )
    return family


def check_tp_size(model_type: str, tp_size: int) -> None:
    """Refuse tp_size > 1 for a family that tensor parallelism does not run."""
    family = get_family(model_type)
    if tp_size > 1 and not family.is_tp_supported:
        with_tp = {k: f for k, f in FAMILIES.items() if f.is_tp_supported}
        raise UnsupportedModelError(
            f"tp_size {tp_size}: tensor parallelism does not run {family.name} "
            f"({model_type}) models yet; families with tensor parallelism: "
            f"{supported_families_text(with_tp)}"
        )
