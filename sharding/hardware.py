"""What the planner knows about cards and dtypes: memory per card and bytes per element.

Units, stated once: ``GiB`` is 2**30 bytes, ``GB`` is 10**9 bytes. Vendors market HBM in
"GB", but the figures are binary stack capacities (an H100 80GB has five 16 GiB stacks), so
the table below reads them as GiB. The runtime reports a little less than that (drivers and
firmware keep some), which ``memory_utilization`` in the planner leaves room for. Host memory
for the ``cpu`` card is given by the user in GB (10**9 bytes), like ``free -g --si``.

>>> get_card("gaudi2").memory_bytes == 96 * GiB
True
>>> get_card("cpu", cpu_memory_gb=64).memory_bytes
64000000000
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CARDS",
    "CARD_CHOICES",
    "DTYPES",
    "DTYPE_CHOICES",
    "GB",
    "CardSpec",
    "DtypeSpec",
    "GiB",
    "get_card",
    "get_dtype",
]

GiB = 2**30
GB = 10**9


@dataclass(frozen=True)
class CardSpec:
    """One accelerator card (or, for ``cpu``, one host).

    is_host_memory: the memory is one pool shared by every TP rank on the node (CPU ranks
        are processes on one host), so a TP group of N ranks gets memory_bytes / N each and
        one replica takes the whole node. For accelerators each rank has its own card.
    """

    name: str
    memory_bytes: int
    description: str
    is_host_memory: bool = False

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB


# name -> card. Capacities are the vendors' published HBM sizes, read as GiB (see above).
CARDS: dict[str, CardSpec] = {
    card.name: card
    for card in (
        CardSpec("gaudi2", 96 * GiB, "Intel Gaudi2, 96 GB HBM2E"),
        CardSpec("gaudi3", 128 * GiB, "Intel Gaudi3, 128 GB HBM2E"),
        CardSpec("h100", 80 * GiB, "NVIDIA H100 SXM, 80 GB HBM3"),
        CardSpec("h200", 141 * GiB, "NVIDIA H200 SXM, 141 GB HBM3e"),
        CardSpec("a100-80", 80 * GiB, "NVIDIA A100 SXM, 80 GB HBM2e"),
    )
}
CARD_CHOICES = (*CARDS, "cpu")


def get_card(name: str, cpu_memory_gb: float | None = None) -> CardSpec:
    """The card called ``name`` (one of CARD_CHOICES); ``cpu`` needs ``cpu_memory_gb``."""
    if name == "cpu":
        if cpu_memory_gb is None or cpu_memory_gb <= 0:
            raise ValueError(
                f"card 'cpu' needs cpu_memory_gb (--cpu-memory-gb): host memory in GB, > 0; "
                f"got {cpu_memory_gb!r}"
            )
        memory_bytes = int(cpu_memory_gb * GB)
        return CardSpec("cpu", memory_bytes, f"CPU host, {cpu_memory_gb:g} GB", is_host_memory=True)
    if name not in CARDS:
        raise ValueError(f"card must be one of {list(CARD_CHOICES)}, got {name!r}")
    return CARDS[name]


@dataclass(frozen=True)
class DtypeSpec:
    """Bytes per element of one serving dtype.

    num_bytes: bytes per element: the weights of the linear layers inside the decoder blocks,
        and the KV cache when it is kept in this dtype.
    unquantized_bytes: everything else (embeddings, lm_head, norms, biases, MoE routers),
        and the activations. fp8 checkpoints (Meta's, NVIDIA ModelOpt's, Intel Neural
        Compressor's) quantize only the block linears and keep the rest in bfloat16.
    """

    name: str
    num_bytes: int
    unquantized_bytes: int


# The dtypes the planner sizes: every dtype the engine runs (engine.config.DTYPE_NAMES, the
# home of the runtime choices; tests/sharding/test_planner.py checks each is here) and fp8,
# which it plans ahead of the engine.
DTYPES: dict[str, DtypeSpec] = {
    spec.name: spec
    for spec in (
        DtypeSpec("float32", 4, 4),
        DtypeSpec("bfloat16", 2, 2),
        DtypeSpec("float16", 2, 2),
        DtypeSpec("fp8", 1, 2),
    )
}
DTYPE_CHOICES = tuple(DTYPES)


def get_dtype(name: str, field: str = "dtype") -> DtypeSpec:
    """The dtype called ``name``; errors name ``field`` and the choices."""
    if name not in DTYPES:
        raise ValueError(f"{field} must be one of {list(DTYPE_CHOICES)}, got {name!r}")
    return DTYPES[name]
