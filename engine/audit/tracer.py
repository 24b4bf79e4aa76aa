"""Run a forward under a dispatch-level tracer and collect what the audit rules flag.

Two modes run together: a `TorchDispatchMode` sees every aten op (after composite ops are
decomposed) and classifies it with `engine.audit.rules`; a `TorchFunctionMode` catches the
Tensor methods that copy to the host without an aten op on the CPU (`.tolist()`,
`.numpy()`, `.cpu()` are no-ops or raw reads there), so a CPU audit still sees them.
Forward pre/post hooks on every submodule keep the path of the module running now
("model.layers.3.self_attn").
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from engine.audit.report import OUTSIDE_PATH, ROOT_PATH, AuditReport, Category, Finding
from engine.audit.rules import classify_op

__all__ = ["audit_forward"]

_HOST_METHODS = {
    torch.Tensor.tolist: ("Tensor.tolist", "copies the tensor to the host as Python values"),
    torch.Tensor.numpy: ("Tensor.numpy", "exposes the tensor as a host numpy array"),
    torch.Tensor.cpu: ("Tensor.cpu", "copies the tensor to the host"),
}


def audit_forward(model: torch.nn.Module, fn: Callable[[], object]) -> AuditReport:
    """Run `fn()` (which runs `model`'s forward) under the tracer and report its findings.

    Only `model`'s submodules are tracked for paths; ops traced inside `fn` but outside the
    model's forward are reported under "<outside>", the model's own forward under "<root>".
    """
    recorder = _Recorder()
    with (
        _track_module_paths(model, recorder.module_stack),
        _HostMethodTracer(recorder),
        _AtenTracer(recorder),
    ):
        fn()
    return recorder.report(type(model).__name__)


class _Recorder:
    def __init__(self) -> None:
        self.module_stack: list[str] = []
        self.num_ops = 0
        self.suppress_depth = 0  # > 0 inside a host method already recorded
        self._counts: dict[tuple[Category, str, str], int] = {}
        # reason, source, and the first Python line that ran the op
        self._details: dict[tuple[Category, str, str], tuple[str, str | None, str | None]] = {}

    @property
    def module_path(self) -> str:
        return self.module_stack[-1] if self.module_stack else OUTSIDE_PATH

    def record(self, category: Category, op: str, reason: str, source: str | None) -> None:
        key = (category, op, self.module_path)
        if key not in self._counts:
            self._details[key] = (reason, source, _caller_location())
        self._counts[key] = self._counts.get(key, 0) + 1

    def on_aten_op(self, func, args, kwargs) -> None:
        self.num_ops += 1
        if self.suppress_depth:
            return
        for category, reason, source in classify_op(func, args, kwargs):
            self.record(category, str(func), reason, source)

    def report(self, model_name: str) -> AuditReport:
        findings = tuple(
            Finding(category, op, path, count, *self._details[(category, op, path)])
            for (category, op, path), count in self._counts.items()
        )
        return AuditReport(model_name=model_name, findings=findings, num_ops=self.num_ops)


class _AtenTracer(TorchDispatchMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.recorder.on_aten_op(func, args, kwargs)
        return func(*args, **kwargs)


class _HostMethodTracer(TorchFunctionMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = _HOST_METHODS.get(func)
        if entry is None or self.recorder.suppress_depth:
            return func(*args, **kwargs)
        self.recorder.record(Category.HOST_SYNC, entry[0], entry[1], None)
        # The aten ops this method runs (_to_copy, _local_scalar_dense) are the same sync.
        self.recorder.suppress_depth += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.recorder.suppress_depth -= 1


@contextlib.contextmanager
def _track_module_paths(model: torch.nn.Module, stack: list[str]) -> Iterator[None]:
    handles = []
    for name, module in model.named_modules():
        path = name or ROOT_PATH
        handles.append(module.register_forward_pre_hook(functools.partial(_enter, stack, path)))
        # always_call: the path is popped even when the forward raises.
        handles.append(
            module.register_forward_hook(functools.partial(_leave, stack), always_call=True)
        )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _enter(stack: list[str], path: str, module: torch.nn.Module, args: tuple) -> None:
    stack.append(path)


def _leave(stack: list[str], module: torch.nn.Module, args: tuple, output: object) -> None:
    stack.pop()


_SKIPPED_DIRS = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
)


def _caller_location() -> str | None:
    """The innermost Python line outside torch and this package, as "path:line"."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_SKIPPED_DIRS) and not filename.startswith("<"):
            return f"{_short_path(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _short_path(filename: str) -> str:
    marker = "site-packages" + os.sep
    if marker in filename:
        return filename.split(marker, 1)[1]
    cwd = os.getcwd() + os.sep
    return filename[len(cwd) :] if filename.startswith(cwd) else filename
