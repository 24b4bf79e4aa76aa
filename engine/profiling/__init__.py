"""Profiling the engine's steps: `capture` runs N engine steps under torch.profiler (the
activities the device has) and writes a Chrome/Perfetto trace with one "step ..." range
per step; `report` splits each step's wall time into matrix multiplies, attention, other
elementwise/normalization work, communication, host work and idle, by step kind and
bucket. `session` profiles one rank's next N steps from inside its executor (every TP rank
writes its own trace and report), which is how a live replica is profiled
(deployments.debug_profile). `gaudi-serve profile` drives them on a synthetic workload.

The scheduler never sees any of it: only executors hold a `session.RankProfiler`.
Importing this package loads no torch.
"""
