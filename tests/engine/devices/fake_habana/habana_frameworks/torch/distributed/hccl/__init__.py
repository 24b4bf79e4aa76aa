"""FAKE `habana_frameworks.torch.distributed.hccl`: the real one registers the "hccl"
torch.distributed backend on import; this one records that it was imported."""

from habana_frameworks import record

record("import habana_frameworks.torch.distributed.hccl")
