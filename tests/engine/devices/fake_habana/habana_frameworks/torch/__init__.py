"""FAKE `habana_frameworks.torch`: like the real one, it fixes lazy or eager mode on import."""

from habana_frameworks import record
from habana_frameworks.torch.utils import internal

record("import habana_frameworks.torch", "lazy" if internal.is_lazy() else "eager")

from habana_frameworks.torch import core, hpu  # noqa: E402

__all__ = ["core", "hpu"]
