"""FAKE `habana_frameworks.torch.utils.internal`: the execution mode, read once at import
(PT_HPU_LAZY_MODE, default "0" = eager, as in current Gaudi releases)."""

import os

_IS_LAZY = os.environ.get("PT_HPU_LAZY_MODE", "0") == "1"


def is_lazy() -> bool:
    return _IS_LAZY
