"""The model families the engine runs: one registry entry per Hugging Face `model_type`.

Each family says which transformers class builds it, whether tensor parallelism runs it,
and where it may swap in modules of its own (`patch_model`: for example a static-shape
mixture-of-experts layer in place of transformers' data-dependent one). A new family is
one `ModelFamily` in FAMILIES plus a tiny model in tests/conftest.py's FAMILY_CONFIGS (a
family that takes images: MULTIMODAL_FAMILIES, and a tiny model of its own there); each
registered family is tested token-identical to transformers' `generate`.

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
    "MULTIMODAL_FAMILIES",
    "ModelFamily",
    "all_families",
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


def imported(module: str, name: str) -> Callable[..., Any]:
    """A family hook (`patch_model`, `unsupported_features`, `encode_image`) that lives in
    `module` (under engine.models), imported when first called: the registry itself stays
    free of torch and transformers."""

    def patch(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    patch.__qualname__ = f"{module}.{name}"
    return patch


# The default `unsupported_features` hook: the checks every family shares.
SHARED_UNSUPPORTED_FEATURES = imported("engine.family_features", "shared_unsupported_features")


@dataclass(frozen=True)
class ModelFamily:
    """One model family.

    model_type: config.json's `model_type`.
    name: the family's display name.
    class_name: the transformers class that builds it (a causal LM, or for a multimodal
        family its conditional-generation class: a vision tower and a causal LM).
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
    encode_image: for a family that takes images, called with the built model, an image's
        patches on the device, its real patch count and its (height, width) before
        processing; returns the image's feature vectors [num_placeholders, hidden], which
        replace its placeholder tokens' embeddings. None (the default): text only.
    patch_buckets: with encode_image or cross_attention, called with the model's config;
        returns the patch (tile) counts the vision model runs at
        (engine.models.llava_next.PatchBuckets).
    cross_attention: for a family whose text model reads images through cross-attention
        layers (the images take no place among the prompt's embeddings): builds the device
        side of its images, called with the built model, the number of images held at once
        and the device (engine.models.mllama.CrossAttentionImages). None: no such layers.
    """

    model_type: str
    name: str
    class_name: str
    is_tp_supported: bool = True
    is_tied_by_default: bool = False
    patch_model: Callable[[Any], Any] = keep_model
    unsupported_features: Callable[[Any], list[str]] = SHARED_UNSUPPORTED_FEATURES
    encode_image: Callable[..., Any] | None = None
    patch_buckets: Callable[[Any], Any] | None = None
    cross_attention: Callable[..., Any] | None = None

    @property
    def is_multimodal(self) -> bool:
        """Whether prompts of this family may hold images (engine.multimodal)."""
        return self.encode_image is not None or self.cross_attention is not None

    def model_class(self) -> type:
        """The transformers class (imports transformers)."""
        return getattr(importlib.import_module("transformers"), self.class_name)


# model_type -> family, for the causal LMs. Tensor parallelism: Llama, Mistral, Qwen2, Qwen3
# and Gemma give output token-identical to tp_size 1 at tp_size 2, as do Mixtral (each
# expert's FFN split, tests/sharding/test_mixtral_tp.py), StarCoder2 and Phi-2
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


# model_type -> family, for the families whose prompts may hold images (their class is a
# vision tower and projector beside a causal LM of one of the families above). Kept apart
# from FAMILIES, whose entries are causal LMs every text-family test runs.
MULTIMODAL_FAMILIES: dict[str, ModelFamily] = {
    family.model_type: family
    for family in (
        # Llava-NeXT: a CLIP vision tower and projector run once per image at fixed patch
        # counts; the text model (any family above) runs over the paged cache with the
        # image features in place of the placeholders' embeddings (engine.models.llava_next).
        # Tensor parallelism would have to split the vision tower too: refused.
        ModelFamily(
            "llava_next",
            "Llava-NeXT",
            "LlavaNextForConditionalGeneration",
            is_tp_supported=False,
            patch_model=imported("engine.models.llava_next", "patch_model"),
            unsupported_features=imported("engine.models.llava_next", "unsupported_features"),
            encode_image=imported("engine.models.llava_next", "encode_image"),
            patch_buckets=imported("engine.models.llava_next", "patch_buckets"),
        ),
        # Llama 3.2 Vision: the vision model and projector run once per image at
        # max_num_tiles tiles; the text model's cross-attention layers read each image's
        # keys and values from a slot pool, its self-attention layers the paged cache
        # (engine.models.mllama). One image per prompt. Tensor parallelism: refused.
        ModelFamily(
            "mllama",
            "Llama 3.2 Vision",
            "MllamaForConditionalGeneration",
            is_tp_supported=False,
            patch_model=imported("engine.models.mllama", "patch_model"),
            unsupported_features=imported("engine.models.mllama", "unsupported_features"),
            patch_buckets=imported("engine.models.mllama", "patch_buckets"),
            cross_attention=imported("engine.models.mllama", "CrossAttentionImages"),
        ),
    )
}


def all_families() -> dict[str, ModelFamily]:
    """Every family the engine runs: FAMILIES, then MULTIMODAL_FAMILIES."""
    return {**FAMILIES, **MULTIMODAL_FAMILIES}


def supported_families_text(families: dict[str, ModelFamily] | None = None) -> str:
    """`Llama (llama), Mistral (mistral), ...`: for error messages (default: every family)."""
    families = all_families() if families is None else families
    return ", ".join(f"{f.name} ({f.model_type})" for f in families.values())


def supported_families_table(families: dict[str, ModelFamily] | None = None) -> str:
    """The families as a Markdown table, one row each: README.md holds it verbatim between
    `<!-- families:begin -->` and `<!-- families:end -->` (a test keeps the two equal).

    >>> print(supported_families_table({"llama": get_family("llama")}))
    | Family | `model_type` | transformers class | Tensor parallel |
    |---|---|---|---|
    | Llama | `llama` | `LlamaForCausalLM` | yes |
    """
    families = all_families() if families is None else families
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
    family = FAMILIES.get(model_type) or MULTIMODAL_FAMILIES.get(model_type)
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
        with_tp = {k: f for k, f in all_families().items() if f.is_tp_supported}
        raise UnsupportedModelError(
            f"tp_size {tp_size}: tensor parallelism does not run {family.name} "
            f"({model_type}) models yet; families with tensor parallelism: "
            f"{supported_families_text(with_tp)}"
        )
