"""The draft must speak the target's vocabulary: same size, same token <-> id mapping.

A draft whose ids mean other tokens still "works" (verification keeps the output exact)
but its proposals are noise; a draft with another vocabulary size cannot be compared at
all. Both are common set-up mistakes, so the engine refuses them at load time.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PretrainedConfig

from engine.loader import load_tokenizer


def check_same_vocab(
    target_path: Path,
    target_config: PretrainedConfig,
    target_tokenizer,
    draft_path: Path,
    draft_config: PretrainedConfig,
) -> None:
    """Raise ValueError naming both models when the draft's vocabulary differs.

    target_tokenizer: the engine's tokenizer, or None (token ids only): then the target's
    tokenizer is loaded from target_path if it has one; the mapping is compared whenever
    the target has a tokenizer, and the draft must then have one too.
    """
    if draft_config.vocab_size != target_config.vocab_size:
        raise ValueError(
            f"the draft model {draft_path} has vocab_size {draft_config.vocab_size} but the "
            f"target model {target_path} has {target_config.vocab_size}: speculative decoding "
            "needs a draft with the target's tokenizer"
        )
    if target_tokenizer is None:
        target_tokenizer = _try_load_tokenizer(target_path)
        if target_tokenizer is None:
            return
    draft_tokenizer = _try_load_tokenizer(draft_path)
    if draft_tokenizer is None:
        raise ValueError(
            f"the draft model {draft_path} has no tokenizer, so its vocabulary cannot be "
            f"checked against the target model {target_path}'s: add the target's tokenizer "
            "files to the draft's directory"
        )
    difference = first_vocab_difference(target_tokenizer.get_vocab(), draft_tokenizer.get_vocab())
    if difference is not None:
        raise ValueError(
            f"the draft model {draft_path} does not share the target model {target_path}'s "
            f"tokenizer: {difference}; speculative decoding needs the same vocabulary and ids"
        )


def first_vocab_difference(target: dict[str, int], draft: dict[str, int]) -> str | None:
    """The lowest token id whose token differs, described; None when the maps are equal.

    >>> first_vocab_difference({"a": 0, "b": 1}, {"a": 0, "c": 1})
    "id 1 is 'b' in the target but 'c' in the draft"
    >>> first_vocab_difference({"a": 0}, {"a": 0}) is None
    True
    """
    if target == draft:
        return None
    by_id_target = {i: t for t, i in target.items()}
    by_id_draft = {i: t for t, i in draft.items()}
    for token_id in sorted(by_id_target.keys() | by_id_draft.keys()):
        ours, theirs = by_id_target.get(token_id), by_id_draft.get(token_id)
        if ours != theirs:
            return f"id {token_id} is {ours!r} in the target but {theirs!r} in the draft"
    return "the two vocabularies map some token to several ids differently"


def _try_load_tokenizer(path: Path):
    try:
        return load_tokenizer(path)
    except FileNotFoundError:
        return None
