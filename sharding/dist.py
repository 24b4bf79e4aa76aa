"""The process group of one TP group: per-rank environment, setup per backend, cleanup.

Every rank of a group runs on one node (the placement group is STRICT_PACK), so the
rendezvous is 127.0.0.1 on a port rank 0 asks its OS for. The port also names DeepSpeed's
shared-memory all-reduce buffers on the CPU (`/dev/shm/deepspeed_allreduce_buffer_<uid>_
<addr>_<port>_<rank>`, 66 MiB each, never deleted by DeepSpeed), so distinct groups never
share buffers and `remove_shm_buffers` deletes exactly this group's.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.devices import Device

__all__ = [
    "VISIBLE_DEVICES",
    "GroupAddress",
    "RankEnv",
    "apply_rank_env",
    "default_extensions_dir",
    "destroy_process_group",
    "find_free_port",
    "init_process_group",
    "remove_shm_buffers",
    "shm_buffer_paths",
]

logger = logging.getLogger(__name__)

# device name -> DeepSpeed accelerator (DS_ACCELERATOR), so DeepSpeed never guesses
DS_ACCELERATORS = {"cpu": "cpu", "cuda": "cuda", "hpu": "hpu"}
# device name -> the variable Ray sets to the card(s) an actor may see
VISIBLE_DEVICES = {"cuda": "CUDA_VISIBLE_DEVICES", "hpu": "HABANA_VISIBLE_MODULES"}
SHM_DIR = Path("/dev/shm")
SHM_BUFFER_PREFIX = "deepspeed_allreduce_buffer"


@dataclass(frozen=True)
class GroupAddress:
    """The rendezvous of one TP group; unique per live group on a node."""

    master_addr: str
    master_port: int


@dataclass(frozen=True)
class RankEnv:
    """What one rank needs to join its group."""

    tp_rank: int
    tp_size: int
    device_name: str  # cpu | cuda | hpu
    address: GroupAddress

    def env_vars(self) -> dict[str, str]:
        return {
            "MASTER_ADDR": self.address.master_addr,
            "MASTER_PORT": str(self.address.master_port),
            "RANK": str(self.tp_rank),
            "WORLD_SIZE": str(self.tp_size),
            "LOCAL_RANK": str(self.tp_rank),
            # NOTE: DeepSpeed's CPU shared-memory all-reduce initialises only when
            # LOCAL_SIZE equals the world size; without it the first forward segfaults.
            "LOCAL_SIZE": str(self.tp_size),
            "DS_ACCELERATOR": DS_ACCELERATORS[self.device_name],
        }


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS says is free now (run it on the node that will listen on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def default_extensions_dir() -> Path | None:
    """Where DeepSpeed's JIT-compiled ops are cached when TORCH_EXTENSIONS_DIR is unset:
    inside the virtual environment, so a fresh install compiles the CPU all-reduce once
    (about 40 s) and every later start reuses it. None outside a writable venv (torch's
    default ~/.cache/torch_extensions then applies)."""
    prefix = Path(sys.prefix)
    if sys.prefix == sys.base_prefix or not os.access(prefix, os.W_OK):
        return None
    return prefix / "torch_extensions"


def apply_rank_env(rank_env: RankEnv) -> None:
    """Set this process's distributed environment. NOTE: must run before DeepSpeed is
    imported (DS_ACCELERATOR) and before the process group starts."""
    os.environ.update(rank_env.env_vars())
    extensions_dir = default_extensions_dir()
    if "TORCH_EXTENSIONS_DIR" not in os.environ and extensions_dir is not None:
        os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions_dir)


def init_process_group(rank_env: RankEnv, device: Device, timeout_s: float) -> None:
    """Join the group with the backend of the device (gloo, nccl, hccl), then initialise
    DeepSpeed's comm layer on it (on the CPU this builds, or loads from cache, the
    shared-memory all-reduce and maps its buffers). Blocks until every rank has joined.
    NOTE: apply_rank_env must have run before DeepSpeed was first imported."""
    apply_rank_env(rank_env)
    backend = device.init_distributed_backend()
    timeout = datetime.timedelta(seconds=timeout_s)
    torch.distributed.init_process_group(
        backend, rank=rank_env.tp_rank, world_size=rank_env.tp_size, timeout=timeout
    )
    import deepspeed

    with contextlib.redirect_stdout(io.StringIO()) as printed:  # "... built successfully"
        deepspeed.init_distributed(dist_backend=backend, verbose=False, timeout=timeout)
    logger.debug("deepspeed.init_distributed: %s", printed.getvalue().strip())


def destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shm_buffer_paths(address: GroupAddress) -> list[Path]:
    """This group's DeepSpeed all-reduce buffers present on this node, one per rank."""
    prefix = f"{SHM_BUFFER_PREFIX}_{os.getuid()}_{address.master_addr}_{address.master_port}_"
    if not SHM_DIR.is_dir():
        return []
    return sorted(p for p in SHM_DIR.glob(prefix + "*") if p.name[len(prefix) :].isdigit())


def remove_shm_buffers(address: GroupAddress) -> list[Path]:
    """Delete this group's buffers on this node; returns what was removed."""
    removed = []
    for path in shm_buffer_paths(address):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def prebuild_cpu_ops() -> None:
    """Compile DeepSpeed's CPU shared-memory all-reduce once, at install time, into the
    cache the ranks use (see default_extensions_dir), so no TP group start compiles it
    (about 40 s on 2 idle cores). A no-op where DeepSpeed's accelerator has no such op."""
    cache = default_extensions_dir()
    if cache is not None:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache))
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()
