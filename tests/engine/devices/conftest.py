"""Fixtures for the device backends: the fake Gaudi bridge, put on sys.path per test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

FAKE_BRIDGE_DIR = Path(__file__).parent / "fake_habana"


class BridgeLog:
    """The calls the fake Gaudi bridge received, in order: (name, args)."""

    def __init__(self, bridge):
        self.bridge = bridge

    @property
    def calls(self) -> list[tuple[str, tuple]]:
        return list(self.bridge.calls)

    def count(self, name: str) -> int:
        return sum(1 for call, _ in self.bridge.calls if call == name)

    def clear(self) -> None:
        self.bridge.calls.clear()


def forget_bridge() -> None:
    """Drop every loaded habana_frameworks module, so the next import starts afresh."""
    for name in [m for m in sys.modules if m.split(".")[0] == "habana_frameworks"]:
        del sys.modules[name]


def has_real_bridge() -> bool:
    """Whether a habana_frameworks other than the fake is importable here."""
    loaded = sys.modules.get("habana_frameworks")
    if loaded is not None and FAKE_BRIDGE_DIR in Path(loaded.__file__).parents:
        forget_bridge()
    try:
        return importlib.util.find_spec("habana_frameworks.torch") is not None
    except ImportError:
        return False


@pytest.fixture
def fake_habana(monkeypatch):
    """The fake bridge importable as `habana_frameworks`; yields its BridgeLog."""
    if has_real_bridge():
        pytest.skip("a real habana_frameworks is installed; the fake would shadow it")
    monkeypatch.delenv("PT_HPU_LAZY_MODE", raising=False)
    monkeypatch.delenv("PT_HPU_ENABLE_LAZY_COLLECTIVES", raising=False)
    # NOTE: DeepSpeed's accelerator was picked at session start (tests/conftest.py), so
    # the fake bridge cannot make DeepSpeed believe it runs on a Gaudi.
    monkeypatch.syspath_prepend(str(FAKE_BRIDGE_DIR))
    import habana_frameworks

    yield BridgeLog(habana_frameworks)
    forget_bridge()


@pytest.fixture
def no_habana(monkeypatch):
    """A process where no habana_frameworks can be imported (the usual CPU/CUDA machine)."""
    if has_real_bridge():
        pytest.skip("a real habana_frameworks is installed here")
    monkeypatch.delenv("PT_HPU_LAZY_MODE", raising=False)


# ---- small step functions for capture tests (CPU here; the GPU tests reuse them) ----


class TinyStepModel(torch.nn.Module):
    """Stands in for the model in one step: embeds the tokens, writes them into a cache at
    their slots (as a step writes the KV cache), reads the whole cache back, projects to
    logits [batch, query_len, vocab]."""

    def __init__(self, vocab: int = 32, hidden: int = 16, num_slots: int = 64):
        super().__init__()
        self.vocab, self.num_slots = vocab, num_slots
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.proj = torch.nn.Linear(hidden, vocab)
        self.register_buffer("cache", torch.zeros(num_slots, hidden))
        self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)  # [batch, query_len, hidden]
        self.cache.index_copy_(0, slot_mapping, hidden.reshape(-1, hidden.shape[-1]))
        return self.proj(hidden + self.cache.mean(0))


def step_inputs(
    batch: int,
    query_len: int,
    seed: int,
    vocab: int = 32,
    num_slots: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Random tokens at distinct cache slots, for TinyStepModel."""
    g = torch.Generator().manual_seed(seed)
    num_tokens = batch * query_len
    inputs = {
        "input_ids": torch.randint(0, vocab, (batch, query_len), generator=g),
        "slot_mapping": torch.randperm(num_slots, generator=g)[:num_tokens],
    }
    return {name: t.to(device) for name, t in inputs.items()}


def eager_reference(fn, inputs: dict[str, torch.Tensor], state: list[torch.Tensor]):
    """fn(**inputs) run eagerly -> (its output, `state` after it); `state` (caches fn
    writes) is then put back as it was, so a graph replay can start from the same place."""
    before = [t.clone() for t in state]
    with torch.inference_mode():
        output = fn(**inputs).clone()
    after = [t.clone() for t in state]
    with torch.inference_mode():
        for t, old in zip(state, before, strict=True):
            t.copy_(old)
    return output, after


def paged_llama_forward(
    num_blocks: int, block_size: int, device: str = "cpu", dtype: torch.dtype = torch.float32
):
    """The engine's forward (as ModelRunner.run_forward) over a tiny random Llama and a
    random paged KV cache -> (forward(input_ids, positions, slot_mapping, block_tables,
    mask) -> logits [batch, 1, vocab], the flat list of cache tensors)."""
    from transformers import AutoModelForCausalLM

    from engine.attention import ATTN_IMPLEMENTATION, PagedMetadata
    from engine.loader import KVSpec
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config("llama")
    model = AutoModelForCausalLM.from_config(config, attn_implementation=ATTN_IMPLEMENTATION)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    spec = KVSpec.from_config(config, dtype)
    shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_dim)
    caches = [
        (
            torch.randn(shape, dtype=dtype, device=device),
            torch.randn(shape, dtype=dtype, device=device),
        )
        for _ in range(spec.num_layers)
    ]

    def forward(input_ids, positions, slot_mapping, block_tables, mask):
        paged = PagedMetadata(caches, slot_mapping, block_tables, positions, mask)
        out = model(
            input_ids=input_ids,
            position_ids=positions,
            paged=paged,
            use_cache=False,
            logits_to_keep=1,
        )
        return out.logits

    return forward, [t for pair in caches for t in pair]


def decode_inputs(
    batch: int,
    num_blocks: int,
    block_size: int,
    num_cache_blocks: int,
    seed: int | None,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """One decode step: a token per row at the end of a random context of up to
    num_blocks blocks (distinct blocks per row, never block 0, the padding block).
    seed None = all padding: token 0 at position 0, writing slot 0 of block 0."""
    from engine.attention import PagedMetadata

    positions = torch.zeros(batch, 1, dtype=torch.long)
    slots = torch.zeros(batch, dtype=torch.long)
    tables = torch.zeros(batch, num_blocks, dtype=torch.long)
    input_ids = torch.zeros(batch, 1, dtype=torch.long)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(3, 512, (batch, 1), generator=g)
        blocks = (torch.randperm(num_cache_blocks - 1, generator=g) + 1)[: batch * num_blocks]
        tables = blocks.view(batch, num_blocks)
        lengths = torch.randint(1, num_blocks * block_size + 1, (batch,), generator=g)
        positions = (lengths - 1).view(batch, 1)
        last = lengths - 1
        slots = tables[torch.arange(batch), last // block_size] * block_size + last % block_size
    inputs = {
        "input_ids": input_ids,
        "positions": positions,
        "slot_mapping": slots,
        "block_tables": tables,
        "mask": PagedMetadata.causal_mask(positions, num_blocks * block_size),
    }
    return {name: t.to(device) for name, t in inputs.items()}
