"""Speculative decoding: a draft model or prompt n-gram lookup proposes up to k tokens per
sequence, the target verifies them in one fixed-shape step (engine.speculative.verify), and an
adaptive rule picks k per step (engine.speculative.adaptive).

Only the config is imported here: the other modules import the engine's runner and
sampler, which import this package.
"""

from engine.speculative.config import SpeculativeConfig

__all__ = ["SpeculativeConfig"]
