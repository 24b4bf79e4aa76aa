"""FAKE Intel Gaudi PyTorch bridge, for gaudi-serve's tests on machines without a Gaudi card.

It mirrors the names gaudi-serve's HPU backend uses from the real `habana_frameworks.torch`
and records every call in `calls` (name, args), so tests can check what the real bridge
would receive. Graphs are emulated on the CPU (see torch/hpu/graphs.py). Put on sys.path
only by tests/engine/devices/conftest.py; never installed.
"""

calls: list[tuple[str, tuple]] = []


def record(name: str, *args: object) -> None:
    calls.append((name, args))
