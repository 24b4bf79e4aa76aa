"""int8/int4 weight-only quantization through Intel Neural Compressor's RTN (round to
nearest), then into the engine's PackedLinear (engine.quant.packed).

INC quantizes every torch.nn.Linear of the module it is given. It is given a holder of the
model's linears rather than the model itself, so it never sets attributes on a transformers
model, never reloads layers from a checkpoint (its RTNConfig defaults to use_layer_wise=True,
which reads the model's own files again: on a TP rank that would undo the sharding) and never
sees a tied lm_head twice. The input embedding goes through the same RTN as a Linear view of
its table; a tied embedding shares the lm_head's quantized table.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from engine.quant.packed import PackedLinear, QuantizedEmbedding
from engine.quant.schemes import SCHEMES

logger = logging.getLogger(__name__)

# INC's logger prints its plan and a statistics table at INFO level on every call.
INC_LOGGER = "neural_compressor"


def rtn_config(bits: int, group_size: int):
    """The RTNConfig this module hands INC (also what the tests check)."""
    from neural_compressor.torch.quantization import RTNConfig

    return RTNConfig(
        dtype="int",
        bits=bits,
        use_sym=True,
        group_size=group_size,
        group_dim=1,  # groups of input channels, so a column-parallel shard is exact too
        use_layer_wise=False,
        quant_lm_head=True,
    )


def quantize_weight_only(model: nn.Module, quantization: str, dtype: torch.dtype) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by an INC-quantized PackedLinear, and
    its plain nn.Embedding input embedding by a QuantizedEmbedding; returns `model`.
    `dtype` is the model's compute dtype (biases and embedding outputs keep it)."""
    scheme = SCHEMES[quantization]
    # NOTE: a TP rank's shard can be empty (DeepSpeed may give one rank all of a small
    # lm_head's input channels): an empty Linear already costs nothing and stays as it is.
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and m.weight.numel()]
    holder = nn.ModuleDict({f"linear{i}": model.get_submodule(n) for i, n in enumerate(names)})
    embedding, tied_name = _input_embedding(model, names)
    if embedding is not None and not tied_name:
        holder["embedding"] = _linear_view(embedding)
    run_rtn(holder, scheme.bits, scheme.group_size)
    packed = {n: PackedLinear.from_inc(holder[f"linear{i}"], dtype) for i, n in enumerate(names)}
    for name, module in packed.items():
        model.set_submodule(name, module)
    if embedding is not None:
        table = (
            packed[tied_name] if tied_name else PackedLinear.from_inc(holder["embedding"], dtype)
        )
        model.set_input_embeddings(QuantizedEmbedding(table, dtype))
    return model


def run_rtn(holder: nn.Module, bits: int, group_size: int) -> None:
    """Quantize every nn.Linear of `holder` in place with INC's RTN: each becomes INC's
    INCWeightOnlyLinear (float32 scales, signed integers, no zero point)."""
    import transformers
    from neural_compressor.torch.algorithms.weight_only import rtn
    from neural_compressor.torch.quantization import convert, prepare

    # NOTE: INC 3.10's rtn module imports transformers only if it was imported before it,
    # but at call time asks sys.modules, then fails with a NameError when the order was
    # the other way round.
    rtn.__dict__.setdefault("transformers", transformers)
    inc_logger = logging.getLogger(INC_LOGGER)
    level = inc_logger.level
    inc_logger.setLevel(logging.WARNING)
    try:
        # use_optimum_format=False: float32 scales and plain signed integers, no zero point
        convert(prepare(holder, rtn_config(bits, group_size)), use_optimum_format=False)
    finally:
        inc_logger.setLevel(level)


def _input_embedding(model: nn.Module, linear_names: list[str]) -> tuple[nn.Embedding | None, str]:
    """The model's input embedding when it is a plain nn.Embedding (a subclass may scale or
    otherwise change its output, so it stays as it is), and the name of the Linear that
    shares its table ('' when none does)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if get is not None else None
    if type(embedding) is not nn.Embedding:
        return None, ""
    for name in linear_names:
        if model.get_submodule(name).weight is embedding.weight:
            return embedding, name
    return embedding, ""


def _linear_view(embedding: nn.Embedding) -> nn.Linear:
    """A bias-free Linear whose weight is the embedding's table ([vocab, hidden])."""
    view = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False, device="meta")
    view.weight = embedding.weight
    return view
