"""int8/int4 weight-only quantization through Intel Neural Compressor's RTN, unit level: the
engine's PackedLinear holds exactly INC's integers and scales, stays compact (no cached
full-precision weight), a tied embedding shares the lm_head's table, and a TP shard
quantizes to the same slice of the quantized full matrix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.quant import GROUP_SIZE, SCHEMES, PackedLinear, QuantizedEmbedding
from engine.quant.apply import weight_bytes
from engine.quant.packed import pack_int, unpack_int
from engine.quant.weight_only import quantize_weight_only, rtn_config, run_rtn

BITS = {"int8": 8, "int4": 4}


def rtn_with_inc(linear: nn.Linear, bits: int):
    """INC's own INCWeightOnlyLinear for `linear` (the reference), as the engine runs it."""
    holder = nn.ModuleDict({"l": linear})
    run_rtn(holder, bits, GROUP_SIZE)
    return holder["l"]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("in_features", [64, 70, 33])  # whole groups, a short last group, odd
def test_pack_unpack_round_trip(bits, in_features):
    low = -(2 ** (bits - 1)) + 1
    values = torch.randint(low, -low + 1, (5, in_features), dtype=torch.int16)
    packed = pack_int(values, bits)
    assert packed.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert torch.equal(unpack_int(packed, bits, in_features).to(torch.int16), values)


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_packed_linear_is_incs_quantization(quantization):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=True)
    x = torch.randn(3, 96)
    ref = rtn_with_inc(linear.requires_grad_(False), BITS[quantization])
    packed = PackedLinear.from_inc(ref, torch.float32)
    # INC's recover() rebuilds its float weight channel by channel: the same numbers
    assert torch.allclose(packed.dequantize(), ref.recover().float(), atol=0, rtol=0)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x, ref.recover().float(), ref.bias.float())
        assert torch.allclose(packed(x), expected, atol=1e-6)
    assert not hasattr(packed, "weight")  # nothing full-size cached, before or after a call


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_model_quantization_replaces_every_linear(tiny_model_dir, tied, quantization):
    from transformers import AutoModelForCausalLM

    path = tiny_model_dir("llama", tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(3, 500, (2, 17))
    with torch.no_grad():
        ref = model(ids).logits
    fp32_bytes = weight_bytes(model)
    quantize_weight_only(model, quantization, torch.float32)
    assert not [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Embedding)]
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, QuantizedEmbedding)
    assert (embedding.table is model.lm_head) is tied
    with torch.no_grad():
        out = model(ids).logits
    error = ((out - ref).norm() / ref.norm()).item()
    assert error < (0.02 if quantization == "int8" else 0.2), error
    # embeddings and every linear quantized: close to bytes_per_param / 4 of fp32
    ratio = weight_bytes(model) / fp32_bytes
    assert ratio < SCHEMES[quantization].bytes_per_param / 4 + 0.05, ratio


def test_embedding_rows_are_the_tables_rows():
    torch.manual_seed(1)
    ref = rtn_with_inc(nn.Linear(64, 50, bias=False).requires_grad_(False), 4)
    table = PackedLinear.from_inc(ref, torch.float32)
    embedding = QuantizedEmbedding(table, torch.bfloat16)
    ids = torch.tensor([[0, 7, 49], [3, 3, 1]])
    out = embedding(ids)
    assert out.shape == (2, 3, 64) and out.dtype == torch.bfloat16
    assert torch.equal(out, table.dequantize()[ids].to(torch.bfloat16))


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_a_shard_quantizes_to_the_slice_of_the_full_matrix(quantization):
    """Row-parallel layers split the input channels: with GROUP_SIZE dividing each half,
    quantizing each rank's half equals halving the quantized full matrix (column-parallel
    layers split whole rows, which quantize independently anyway)."""
    torch.manual_seed(2)
    in_features = 704  # the bundled model's down_proj: 352 = 11 * 32 per rank at TP=2
    weight = torch.randn(48, in_features)

    def packed(w: torch.Tensor) -> PackedLinear:
        linear = nn.Linear(w.shape[1], w.shape[0], bias=False).requires_grad_(False)
        linear.weight.copy_(w)
        return PackedLinear.from_inc(rtn_with_inc(linear, BITS[quantization]), torch.float32)

    full = packed(weight).dequantize()
    halves = [packed(part).dequantize() for part in weight.split(in_features // 2, dim=1)]
    assert torch.equal(torch.cat(halves, dim=1), full)
    rows = [packed(part).dequantize() for part in weight.split(24, dim=0)]
    assert torch.equal(torch.cat(rows, dim=0), full)


def test_rtn_config_is_what_the_engine_needs():
    config = rtn_config(4, GROUP_SIZE)
    assert (config.dtype, config.bits, config.use_sym, config.group_size) == ("int", 4, True, 32)
    assert config.group_dim == 1  # groups of input channels
    assert config.use_layer_wise is False  # never reload layers from the checkpoint
    assert config.quant_lm_head is True
