"""gaudi-serve's single-replica engine: continuous batching over a paged KV cache.

Never imports Ray. Device backends are imported only when chosen.
"""

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.errors import EmptyPromptError, EngineDeadError, PromptTooLongError
from engine.llm import LLM
from engine.llm_engine import Engine
from engine.outputs import RequestOutput, TokenLogprob
from engine.sampling_params import SamplingParams
from engine.speculative import SpeculativeConfig
from engine.stats import EngineStats

__all__ = [
    "LLM",
    "AsyncEngine",
    "EmptyPromptError",
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "EngineStats",
    "PromptTooLongError",
    "RequestOutput",
    "SamplingParams",
    "SpeculativeConfig",
    "TokenLogprob",
]
