"""Per-rank loading: build the model without memory, shard it, read only this rank's slices.

The model is built on the meta device (shapes only), DeepSpeed AutoTP shards it there and
materialises the local shards uninitialised; then every parameter is filled from the
safetensors files with exactly the slices this rank holds. DeepSpeed records how it cut
each parameter as an affine map (per rank, a list of hyper-rectangles of the full tensor and
where each lands in the shard), so column-, row-, uneven and fused (q|k|v) splits all read
the same way. Host memory per rank is ~1/N of the sharded weights (plus replicated ones
such as embeddings and norms).

NOTE: each tensor is read through its own short-lived `safe_open`: safetensors memory-maps
the file, and touched pages stay in this process's RSS until the map is closed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PretrainedConfig

from engine.attention import ATTN_IMPLEMENTATION
from engine.families import get_family

__all__ = ["LoadReport", "build_meta_model", "load_rank_weights", "weight_files"]

# Set by DeepSpeed on every parameter AutoTP split (deepspeed.checkpoint.constants).
DS_AUTOTP_UC_META = "ds_autotp_universal_checkpoint_meta"
# Layers whose split is one contiguous block per rank: the only ones loadable without the
# affine map (DeepSpeed releases that predate it).
PLAIN_SPLIT_LAYERS = ("LinearLayer", "LinearAllreduce", "LmHeadLinearAllreduce")


@dataclass(frozen=True)
class LoadReport:
    num_tensors: int
    num_bytes: int  # bytes copied into this rank's parameters


@dataclass(frozen=True)
class _Piece:
    """A block of the full tensor (`source`) and where it goes in the shard (`dest`)."""

    source: tuple[slice, ...]
    dest: tuple[slice, ...]
    scale: float = 1.0


def build_meta_model(hf_config: PretrainedConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The model with every parameter and buffer on the meta device: no memory, no init.

    Built as engine.loader builds it on one device: by its family's transformers class
    (engine.families), then the family's `patch_model` hook, here before AutoTP shards it
    (modules it swaps in are built on meta too). UnsupportedModelError for an unknown family.
    """
    family = get_family(hf_config.model_type)
    with torch.device("meta"):
        # `_from_config` is what AutoModelForCausalLM.from_config calls on the class it picks
        model = family.model_class()._from_config(
            hf_config, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION
        )
        model = family.patch_model(model)
    return model.eval().requires_grad_(False)


def weight_files(model_path: Path) -> dict[str, Path]:
    """Checkpoint key -> safetensors file holding it (single file or sharded index)."""
    index = model_path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: model_path / name for key, name in weight_map.items()}
    files = sorted(model_path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors weights in {model_path}; tensor-parallel loading reads "
            "safetensors only (convert .bin checkpoints with save_pretrained)"
        )
    keys: dict[str, Path] = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            keys.update(dict.fromkeys(f.keys(), path))
    return keys


@torch.no_grad()
def load_rank_weights(model: torch.nn.Module, model_path: Path, tp_rank: int) -> LoadReport:
    """Fill every parameter of a sharded, materialised model with this rank's slices, then
    recompute the non-persistent buffers (rotary frequencies) left uninitialised."""
    files = weight_files(model_path)
    tied = _tied_sources(model)
    num_tensors = num_bytes = 0
    for name, param in model.named_parameters(remove_duplicate=False):
        stored = _stored_tensor(model, name, files, tied)
        if stored is None:
            raise KeyError(f"parameter {name!r} of the model has no weights in {model_path}")
        module = model.get_submodule(name.rpartition(".")[0])
        for piece in _rank_pieces(param, module, stored.shape, tp_rank):
            block = stored.read(piece.source)
            if piece.scale != 1.0:
                block = block * piece.scale
            param.data[piece.dest].copy_(block)
            num_bytes += block.numel() * param.element_size()
        param._is_hf_initialized = True  # transformers' initialisers now leave it alone
        num_tensors += 1
    _init_non_persistent_buffers(model)
    return LoadReport(num_tensors=num_tensors, num_bytes=num_bytes)


@dataclass(frozen=True)
class _StoredTensor:
    """A parameter as the checkpoint stores it: `groups` of keys, each group's tensors
    concatenated along dim 0; one group is the tensor itself, several (`is_stacked`) are
    stacked along a new dim 0 (one per expert). Reads only the requested block, each
    tensor through its own short-lived `safe_open`."""

    files: dict[str, Path]
    groups: tuple[tuple[str, ...], ...]
    is_stacked: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        shapes = {self._group_shape(group) for group in self.groups}
        if len(shapes) != 1:
            raise ValueError(f"checkpoint tensors {self.groups} stacked with shapes {shapes}")
        shape = shapes.pop()
        return (len(self.groups), *shape) if self.is_stacked else shape

    def read(self, box: tuple[slice, ...]) -> torch.Tensor:
        if not self.is_stacked:
            return self._read_group(self.groups[0], box)
        return torch.stack([self._read_group(g, box[1:]) for g in self.groups[box[0]]])

    def _key_shape(self, key: str) -> tuple[int, ...]:
        with safe_open(self.files[key], framework="pt") as f:
            return tuple(f.get_slice(key).get_shape())

    def _group_shape(self, group: tuple[str, ...]) -> tuple[int, ...]:
        shapes = [self._key_shape(key) for key in group]
        return (sum(shape[0] for shape in shapes), *shapes[0][1:])

    def _read_group(self, group: tuple[str, ...], box: tuple[slice, ...]) -> torch.Tensor:
        """Rows box[0] of the group's tensors concatenated: from each the rows it holds."""
        parts, offset = [], 0
        for key in group:
            rows = self._key_shape(key)[0]
            start, stop = max(box[0].start, offset), min(box[0].stop, offset + rows)
            if start < stop:
                with safe_open(self.files[key], framework="pt") as f:
                    rows_box = (slice(start - offset, stop - offset), *box[1:])
                    parts.append(f.get_slice(key)[rows_box])
            offset += rows
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _stored_tensor(
    model: torch.nn.Module, name: str, files: dict[str, Path], tied: dict[str, str]
) -> _StoredTensor | None:
    """Where parameter `name` is in the checkpoint: under its own name, the name it is tied
    to, or where the nearest enclosing module with a `checkpoint_source(name, path)` hook
    says (engine.models: a key of another name, or per-expert keys to stack); None if
    nowhere."""
    key = name if name in files else tied.get(name)
    if key in files:
        return _StoredTensor(files, ((key,),))
    path = name
    while path:
        path = path.rpartition(".")[0]
        hook = getattr(model.get_submodule(path), "checkpoint_source", None)
        if hook is None:
            continue
        source = hook(name[len(path) + 1 :] if path else name, path)
        if isinstance(source, str):
            stored = _StoredTensor(files, ((source,),))
        elif source:
            stored = _StoredTensor(files, tuple(source), is_stacked=True)
        else:
            return None
        return stored if all(k in files for g in stored.groups for k in g) else None
    return None


def _rank_pieces(
    param: torch.Tensor, module: torch.nn.Module, full_shape: tuple[int, ...], tp_rank: int
) -> list[_Piece]:
    local_shape = tuple(param.shape)
    meta = getattr(param, DS_AUTOTP_UC_META, None)
    affine = (meta or {}).get("conversion", {}).get("affine_map")
    if affine is not None:
        return _pieces_from_affine_map(affine, tp_rank, full_shape, local_shape)
    if local_shape == full_shape:  # replicated (embeddings, norms)
        return [_Piece(_whole(full_shape), _whole(full_shape))]
    differing = [d for d, (a, b) in enumerate(zip(local_shape, full_shape, strict=True)) if a != b]
    if type(module).__name__ in PLAIN_SPLIT_LAYERS and len(differing) == 1:
        dim = differing[0]
        if full_shape[dim] % local_shape[dim] == 0:  # even contiguous split
            source = list(_whole(full_shape))
            start = tp_rank * local_shape[dim]
            source[dim] = slice(start, start + local_shape[dim])
            return [_Piece(tuple(source), _whole(local_shape))]
    raise ValueError(
        f"cannot tell which slice of a {full_shape} tensor this rank's {local_shape} shard of "
        f"{type(module).__name__} holds: DeepSpeed recorded no layout (upgrade deepspeed)"
    )


def _pieces_from_affine_map(
    affine: dict, tp_rank: int, full_shape: tuple[int, ...], local_shape: tuple[int, ...]
) -> list[_Piece]:
    ranks = affine["ranks"]
    entry = ranks.get(tp_rank, ranks.get(str(tp_rank)))
    if tuple(affine["logical_shape"]) != full_shape or tuple(entry["shard_shape"]) != local_shape:
        raise ValueError(
            f"DeepSpeed's layout ({affine['logical_shape']} -> {entry['shard_shape']}) does not "
            f"match the checkpoint tensor {full_shape} and the shard {local_shape}"
        )
    return [
        _Piece(
            _box(full_shape, piece["shape"], *piece["source"]),
            _box(local_shape, piece["shape"], *piece["dest"]),
            piece.get("scale", 1.0),
        )
        for piece in entry["pieces"]
        if all(piece["shape"])  # an empty piece (a rank with no columns) reads nothing
    ]


def _box(
    shape: tuple[int, ...], box_shape: list[int], offset: int, strides: list[int]
) -> tuple[slice, ...]:
    """The hyper-rectangle of a dense tensor of `shape` that an as_strided view with the
    tensor's own strides covers: e.g. shape (8, 6), box (8, 3), offset 3 -> [0:8, 3:6]."""
    dense = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        dense[d] = dense[d + 1] * shape[d + 1]
    if list(strides) != dense:
        raise ValueError(f"a shard piece with strides {strides} is not a block of {shape}")
    starts = [(offset // dense[d]) % shape[d] for d in range(len(shape))]
    return tuple(slice(s, s + n) for s, n in zip(starts, box_shape, strict=True))


def _whole(shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)


def _tied_sources(model: torch.nn.Module) -> dict[str, str]:
    """Tied parameter -> the checkpoint key that holds it (lm_head -> embed_tokens)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    if not tied and getattr(model.config, "tie_word_embeddings", False):
        tied = {"lm_head.weight": "model.embed_tokens.weight"}
    return dict(tied)


def _init_non_persistent_buffers(model: torch.nn.Module) -> None:
    """Buffers that are not in checkpoints (rotary inv_freq) were built on meta and are
    garbage after materialisation: let transformers' own initialiser recompute them."""
    for module in model.modules():
        if module._non_persistent_buffers_set:
            model._init_weights(module)
