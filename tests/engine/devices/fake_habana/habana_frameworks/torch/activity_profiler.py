"""FAKE profiler side of the Gaudi bridge.

The real bridge registers its device module as `torch.hpu` and, in C++, a Kineto activity
profiler for ProfilerActivity.HPU. So `torch.profiler.profile(activities=[CPU, HPU])`
asks `torch.hpu.is_available()`, checks that HPU is among the supported activities, and
starts a trace that the bridge's plugin fills with the device's ops. `install` stands in
for both in Python: it registers this fake's `hpu` module as `torch.hpu`, adds HPU to the
activities torch's profiler supports, and records what the plugin would receive:
("profiler.start", activity names) when a trace starts and ("profiler.stop",) when it
stops. The traces themselves hold the host side only (no device ops are emulated).

Installed per test through the `setattr` of pytest's monkeypatch (undone after the test),
never on import: a `torch.hpu` left behind would make other libraries (transformers)
believe they run on a Gaudi.
"""

from collections.abc import Callable

from habana_frameworks import record


def install(setattr: Callable[..., None]) -> None:
    """Plug the fake profiler into torch; `setattr` is monkeypatch.setattr."""
    import torch
    import torch.autograd.profiler as autograd_profiler
    from torch.profiler import ProfilerActivity

    from habana_frameworks.torch import hpu

    supported = autograd_profiler._supported_activities
    enable = autograd_profiler._enable_profiler
    disable = autograd_profiler._disable_profiler

    def supported_with_hpu() -> set:
        return set(supported()) | {ProfilerActivity.HPU}

    def enable_and_record(config, activities, *args, **kwargs):
        record("profiler.start", tuple(sorted(a.name for a in activities)))
        return enable(config, activities, *args, **kwargs)

    def disable_and_record(*args, **kwargs):
        record("profiler.stop")
        return disable(*args, **kwargs)

    setattr(torch, "hpu", hpu, raising=False)
    setattr(autograd_profiler, "_supported_activities", supported_with_hpu)
    setattr(autograd_profiler, "_enable_profiler", enable_and_record)
    setattr(autograd_profiler, "_disable_profiler", disable_and_record)
