"""The factory of the configured proposer (n-gram lookup, a draft model, or both), apart
from engine.speculative.proposer so that the proposers can import the shared types."""

from __future__ import annotations

from pathlib import Path

from engine.shapes import StepShaper
from engine.speculative.proposer import Proposer


def create_proposer(
    engine_config, shaper: StepShaper, executor, target_path: Path, target_tokenizer
) -> Proposer:
    """The proposer of engine_config.speculative.method. A draft is loaded on the
    executor's device (a local executor's; else engine_config.device, in this process)
    after checking it shares the target's vocabulary."""
    from engine.speculative.ngram import NgramProposer

    config = engine_config.speculative
    max_model_len = engine_config.max_model_len
    if config.method == "ngram":
        return NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    from engine.devices import get_device
    from engine.loader import load_config, resolve_model_path
    from engine.speculative.draft import DraftProposer
    from engine.speculative.vocab import check_same_vocab

    if config.draft_model is None:
        from engine.assets import default_draft_model_path

        draft_path = default_draft_model_path()
    else:
        draft_path = resolve_model_path(config.draft_model)
    draft_config = load_config(draft_path)
    target_config = load_config(target_path)
    check_same_vocab(target_path, target_config, target_tokenizer, draft_path, draft_config)
    draft_max = getattr(draft_config, "max_position_embeddings", None)
    if draft_max is not None and draft_max < max_model_len:
        raise ValueError(
            f"the draft model {draft_path} has max_position_embeddings {draft_max}, "
            f"less than max_model_len {max_model_len}: lower max_model_len"
        )
    device = getattr(executor, "device", None) or get_device(engine_config.device)
    draft = DraftProposer(
        draft_path,
        device,
        engine_config.dtype,
        shaper,
        engine_config.strict_shapes,
        kv_cache_dtype=engine_config.kv_cache_dtype,
    )
    if config.method == "hybrid":
        from engine.speculative.hybrid import HybridProposer

        ngram = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
        return HybridProposer(ngram, draft)
    return draft
