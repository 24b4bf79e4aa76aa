"""StarCoder (`gpt_bigcode`): the config check its family adds to the shared ones.

transformers' GPTBigCode attention takes its KV heads from `multi_query` (1, or one per
query head) and never reads `num_key_value_heads`, which its config derives when built;
the engine sizes the KV cache by `num_key_value_heads`. A config.json whose value
disagrees (a config built through the `num_attention_heads` alias derives it from the
default n_head, 12) would give a cache of the wrong shape: it is refused, naming both.
"""

from __future__ import annotations

from typing import Any

from engine.family_features import shared_unsupported_features

__all__ = ["unsupported_features"]


def unsupported_features(config: Any) -> list[str]:
    """The shared checks, and the KV head count the attention uses against the config's."""
    reasons = shared_unsupported_features(config)
    kv_heads = 1 if config.multi_query else config.n_head
    stated = getattr(config, "num_key_value_heads", None)
    if stated is not None and stated != kv_heads:
        reasons.append(
            f"num_key_value_heads={stated} disagrees with multi_query={config.multi_query} "
            f"and n_head={config.n_head} (the attention uses {kv_heads} KV heads); "
            f"set num_key_value_heads to {kv_heads} or remove it from config.json"
        )
    return reasons
