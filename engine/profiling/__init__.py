"""Profiling the engine's steps: `capture` runs N engine steps under torch.profiler (the
activities the device has) and writes a Chrome/Perfetto trace with one "step ..." range
per step; `report` splits each step's wall time into matrix multiplies, attention, other
elementwise/normalization work, communication, host work and idle, by step kind and
bucket. `gaudi-serve profile` drives both on a synthetic workload.

Nothing here is imported by the engine itself; importing this package loads no torch.
"""
