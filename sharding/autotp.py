"""DeepSpeed AutoTP behind one function: shard an unmodified Hugging Face model in place.

Works on a model built on the meta device: DeepSpeed splits the meta tensors (no memory)
and materialises the local shards uninitialised on the device; every split parameter then
carries how it was cut (DeepSpeed's universal-checkpoint layout, read by sharding.loading).
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch

__all__ = ["shard_model"]

logger = logging.getLogger(__name__)


def shard_model(model: torch.nn.Module, tp_size: int, dtype: torch.dtype) -> torch.nn.Module:
    """Replace the model's linear layers by tensor-parallel ones for a group of tp_size
    ranks (column-parallel q/k/v/gate/up, row-parallel o/down/lm_head with an all-reduce)
    and return the sharded model itself (not DeepSpeed's wrapper: the runner calls it with
    its own keyword arguments, which reach the attention function with the local heads).

    A model on the meta device (sharding.loading.build_meta_model) comes back with its
    shards allocated but uninitialised: fill them with sharding.loading.load_rank_weights.
    NOTE: the process group must exist (sharding.dist.init_process_group).
    """
    import deepspeed

    with contextlib.redirect_stdout(io.StringIO()) as printed:  # DeepSpeed print()s its plan
        engine = deepspeed.init_inference(
            model,
            tensor_parallel={"tp_size": tp_size},
            dtype=dtype,
            replace_with_kernel_inject=False,
        )
    logger.debug("deepspeed.init_inference: %s", printed.getvalue().strip())
    model = engine.module
    # NOTE: materialising off the meta device replaced the parameter objects and with them
    # the layout DeepSpeed recorded; every TP layer can record it again.
    for module in model.modules():
        mark = getattr(module, "_mark_uc_metadata", None)
        if mark is not None:
            mark()
    return model
