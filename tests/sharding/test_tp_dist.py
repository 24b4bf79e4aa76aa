"""The pieces of a TP group that need no process group: each rank's environment, the
/dev/shm buffers that belong to one group, and how a rank turns DeepSpeed's record of a
split into the slices it reads from the checkpoint."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
import torch

from sharding.dist import (
    SHM_BUFFER_PREFIX,
    SHM_DIR,
    GroupAddress,
    RankEnv,
    find_free_port,
    remove_shm_buffers,
    shm_buffer_paths,
)
from sharding.loading import _box, _pieces_from_affine_map


def test_rank_env_has_what_deepspeed_needs():
    env = RankEnv(1, 4, "cpu", GroupAddress("127.0.0.1", 41234)).env_vars()
    assert env == {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "41234",
        "RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_SIZE": "4",  # without it DeepSpeed's CPU all-reduce segfaults
        "DS_ACCELERATOR": "cpu",
    }


def test_free_port_can_be_listened_on():
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_only_this_groups_shm_buffers_are_removed():
    port = 40000 + uuid.uuid4().int % 20000
    mine = GroupAddress("127.0.0.1", port)
    prefix = f"{SHM_BUFFER_PREFIX}_{os.getuid()}_127.0.0.1_"
    names = {
        "mine": [f"{prefix}{port}_0", f"{prefix}{port}_1"],
        "other": [f"{prefix}{port + 1}_0", f"{prefix}{port}0_0", f"{prefix}{port}_x"],
    }
    paths = {k: [SHM_DIR / n for n in v] for k, v in names.items()}
    for path in paths["mine"] + paths["other"]:
        path.write_bytes(b"")
    try:
        assert shm_buffer_paths(mine) == sorted(paths["mine"])
        assert sorted(remove_shm_buffers(mine)) == sorted(paths["mine"])
        assert shm_buffer_paths(mine) == []
        assert all(p.exists() for p in paths["other"])
    finally:
        for path in paths["mine"] + paths["other"]:
            path.unlink(missing_ok=True)


def test_box_is_the_block_a_strided_view_covers():
    assert _box((8, 6), [8, 3], 3, [6, 1]) == (slice(0, 8), slice(3, 6))
    assert _box((8, 6), [4, 6], 24, [6, 1]) == (slice(4, 8), slice(0, 6))
    with pytest.raises(ValueError, match="not a block"):
        _box((8, 6), [8, 3], 3, [1, 8])


def _layouts():
    from deepspeed.checkpoint import affine

    shape = (12, 10)
    return {
        "column even": affine.contiguous_split_map(shape, [6, 6], 0),
        "row uneven": affine.contiguous_split_map(shape, [10, 0], 1),  # lm_head, grain 64
        "fused q|k|v": affine.sub_param_map(shape, [6, 3, 3], [[3, 3], [2, 1], [1, 2]], 0),
        "replicated": affine.replicated_map(shape, 2),
    }


@pytest.mark.parametrize("layout", ["column even", "row uneven", "fused q|k|v", "replicated"])
def test_pieces_rebuild_the_shard_deepspeed_would_hold(layout):
    """Reading only the pieces' source slices gives exactly DeepSpeed's own shard."""
    affine_map = _layouts()[layout]
    full = torch.arange(120, dtype=torch.float32).view(12, 10)
    for rank in (0, 1):
        expected = affine_map.extract(full, rank)
        shard = torch.full_like(expected, float("nan"))
        pieces = _pieces_from_affine_map(
            affine_map.to_dict(), rank, tuple(full.shape), tuple(expected.shape)
        )
        for piece in pieces:
            shard[piece.dest].copy_(full[piece.source])
        assert torch.equal(shard, expected), (layout, rank)


def test_step_input_survives_the_wire():
    """The ModelInput sent to every rank travels as numpy arrays and comes back equal."""
    import pickle

    from engine.model_input import dummy_model_input
    from engine.shapes import StepShape
    from sharding.worker import from_wire, to_wire

    inp = dummy_model_input(StepShape("decode", 4, 1, 3))
    back = from_wire(pickle.loads(pickle.dumps(to_wire(inp))))
    assert type(back) is type(inp) and back.shape == inp.shape
    for name in ("input_ids", "positions", "slot_mapping", "block_tables"):
        assert torch.equal(getattr(back, name), getattr(inp, name)), name
    assert torch.equal(back.sampling.temperature, inp.sampling.temperature)
    assert back.sampling.is_all_greedy == inp.sampling.is_all_greedy
