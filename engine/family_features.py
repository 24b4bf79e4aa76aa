"""Refusing, by name, what a model asks for that the engine does not implement.

The engine runs transformers' model classes unchanged, with attention replaced by its
paged attention (engine.attention). A feature that transformers implements in its own
attention code and the paged attention does not would be dropped without a word, and the
output would differ from transformers'. The paged attention implements causal attention,
grouped- and multi-query heads, sliding windows (the `sliding_window` kwarg) and attention
logit soft-capping (the `softcap` kwarg); it does not implement ALiBi position biases.

Every model's config passes `check_config` when it is loaded (engine.loader.load_config):
its family's `unsupported_features` hook (engine.families) names what it would get wrong.
The default hook runs the checks every family shares (`shared_unsupported_features`); a
family with checks of its own points its hook at a function of its own (under
engine.models), which adds to the shared checks, or leaves out one it implements itself.

>>> class Config:
...     model_type = "llama"
...     position_embedding_type = "alibi"
>>> print(*shared_unsupported_features(Config()))
ALiBi position biases (position_embedding_type='alibi') are not implemented by the paged attention
"""

from __future__ import annotations

from typing import Any

from engine.errors import UnsupportedModelError
from engine.families import get_family

__all__ = ["NOT_IMPLEMENTED", "alibi", "check_config", "shared_unsupported_features"]

NOT_IMPLEMENTED = "are not implemented by the paged attention"


def alibi(config: Any) -> str | None:
    """ALiBi position biases (Falcon's `alibi`, BLOOM/MPT-style `position_embedding_type`):
    a bias added to attention scores, which the paged attention never receives."""
    if getattr(config, "alibi", False) is True:
        return f"ALiBi position biases (alibi=true) {NOT_IMPLEMENTED}"
    if getattr(config, "position_embedding_type", None) == "alibi":
        return f"ALiBi position biases (position_embedding_type='alibi') {NOT_IMPLEMENTED}"
    return None


SHARED_CHECKS = (alibi,)


def shared_unsupported_features(config: Any) -> list[str]:
    """The checks every family shares: one reason (a clause naming the feature) per
    feature of `config` the paged attention does not implement."""
    return [reason for check in SHARED_CHECKS if (reason := check(config)) is not None]


def check_config(config: Any, where: object = None) -> None:
    """UnsupportedModelError for a family the engine does not run, or naming every feature
    of `config` it does not implement (and `where` the model came from, when given)."""
    family = get_family(config.model_type, where)
    reasons = family.unsupported_features(config)
    if reasons:
        of = f" of {where}" if where is not None else ""
        raise UnsupportedModelError(
            f"the {family.name} ({config.model_type}) model{of} is refused rather than run "
            f"with output different from transformers': {'; '.join(reasons)}"
        )
