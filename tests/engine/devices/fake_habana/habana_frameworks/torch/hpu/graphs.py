"""FAKE HPU graphs, emulated on the CPU so that a replay really recomputes.

Between capture_begin and capture_end a TorchDispatchMode records every aten op with the
very tensors it read and wrote. replay() runs the ops again on those same tensors and
writes each result into the tensor the capture produced, so, as with a real graph: a
replay reads its inputs from the captured (static) buffers only, returns its result in the
captured output tensor, repeats in-place writes (a KV cache), and freezes whatever Python
decided during capture. As HPU graphs support neither host ops nor dynamic shapes, it refuses
to capture ops that read a value on the host or whose output shape depends on data.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from habana_frameworks import record

# Ops a graph cannot hold: a read of a value on the host, data-dependent output shapes.
_NOT_CAPTURABLE = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
}


class _OpTape(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NOT_CAPTURABLE:
            raise RuntimeError(f"{func} is not supported during HPU Graph capturing")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Views and in-place ops give back the captured memory itself: nothing to copy."""
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride()


class HPUGraph:
    def __init__(self) -> None:
        record("HPUGraph")
        self._tape: _OpTape | None = None

    def capture_begin(self) -> None:
        record("HPUGraph.capture_begin")
        self._tape = _OpTape()
        self._tape.__enter__()

    def capture_end(self) -> None:
        self._tape.__exit__(None, None, None)
        record("HPUGraph.capture_end", len(self._tape.ops))

    def replay(self, asynchronous: bool = False) -> None:
        record("HPUGraph.replay")
        for func, args, kwargs, out in self._tape.ops:
            fresh = func(*args, **kwargs)
            for dst, src in zip(tree_leaves(out), tree_leaves(fresh), strict=True):
                if isinstance(dst, torch.Tensor) and not _same_memory(dst, src):
                    dst.copy_(src)
