"""Speculative decoding: a draft model or prompt n-gram lookup proposes up to k tokens per
sequence, the target verifies them in one fixed-shape step (engine.speculative.verify), and an
adaptive rule picks k per step (engine.speculative.adaptive). It plugs into the engine as a
step strategy (engine.speculative.strategy).

Only the config is imported here: engine.config needs it, and the rest imports torch.
"""

from engine.speculative.config import SpeculativeConfig

__all__ = ["SpeculativeConfig"]
