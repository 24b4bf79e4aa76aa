"""DeepSpeed AutoTP behind one function: shard an unmodified Hugging Face model in place.

Works on a model built on the meta device: DeepSpeed splits the meta tensors (no memory)
and materialises the local shards uninitialised on the device; every split parameter then
carries how it was cut (DeepSpeed's universal-checkpoint layout, read by sharding.loading).

AutoTP splits linear layers only. A module the engine swaps in with parameters it cannot
split (engine.models: Mixtral's experts, stored as 3-D [experts, out, in] tensors) says
how to split them in `tp_splits` ({name: (dim, number of fused blocks along it)}) and
takes the group's all-reduce in `tp_all_reduce`; it is split here, before DeepSpeed, with
the same recorded layout.
"""

from __future__ import annotations

import contextlib
import functools
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

    own_layouts = _split_own_layers(model, tp_size)
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
    _finish_own_layers(model, own_layouts, engine.mp_group)
    return model


def _split_own_layers(model: torch.nn.Module, tp_size: int) -> dict[tuple[str, str], dict]:
    """Give every parameter listed in a module's `tp_splits` its shard's shape, on the
    meta device, each rank taking its contiguous share of every fused block along `dim`
    (column- or row-parallel like a linear layer's). Returns (module path, parameter name)
    -> DeepSpeed's layout of the split (an affine map, as a dict)."""
    from deepspeed.checkpoint.affine import sub_param_map

    layouts = {}
    for path, module in model.named_modules():
        for name, (dim, num_blocks) in getattr(module, "tp_splits", {}).items():
            param = getattr(module, name)
            full_shape = tuple(param.shape)
            where = f"{path}.{name} {full_shape}"
            if not param.is_meta:
                raise ValueError(
                    f"{where} is on {param.device}: tensor parallelism splits a model built on "
                    "the meta device (sharding.loading.build_meta_model)"
                )
            block = full_shape[dim] // num_blocks
            if full_shape[dim] % num_blocks or block % tp_size:
                valid = [n for n in range(1, block + 1) if block % n == 0]
                raise ValueError(
                    f"tp_size {tp_size} does not divide {where} along dim {dim} "
                    f"({num_blocks} fused block(s) of {block}); valid tp_size values: {valid}"
                )
            widths = [[block // tp_size] * tp_size for _ in range(num_blocks)]
            layout = sub_param_map(full_shape, [block] * num_blocks, widths, dim)
            shard = torch.empty(layout.shard_shapes[0], dtype=param.dtype, device="meta")
            setattr(module, name, torch.nn.Parameter(shard, requires_grad=False))
            layouts[(path, name)] = layout.to_dict()
    return layouts


def _finish_own_layers(
    model: torch.nn.Module, layouts: dict[tuple[str, str], dict], group: object
) -> None:
    """On the materialised shards: record each split's layout where sharding.loading reads
    it, and hand every split module the group's all-reduce."""
    from deepspeed import comm

    from sharding.loading import DS_AUTOTP_UC_META

    for (path, name), layout in layouts.items():
        module = model.get_submodule(path)
        setattr(getattr(module, name), DS_AUTOTP_UC_META, {"conversion": {"affine_map": layout}})
        module.tp_all_reduce = functools.partial(comm.inference_all_reduce, group=group)
