"""The tensor-parallel executor: drives one TP group of Ray worker actors, one per card.

The driver (a Serve replica, or the offline `LLM`) keeps the scheduler and block manager.
Each step it sends the step's host-side ModelInput to every rank in one remote call per
rank; all ranks run the sharded forward, rank 0 samples and returns the tokens.

Lifecycle: start-up errors (a rank fails to load, a group that cannot be placed) raise
within a bounded time and tear the group down; a rank that dies or hangs mid-run makes
`execute` raise EngineDeadError and marks the executor unhealthy; `shutdown` kills every
rank and removes the group's /dev/shm buffers.

Usage (the engine does this when `tp_size > 1`)::

    executor = TPExecutor(Path("/models/llama"), EngineConfig(tp_size=2))
    executor.init_kv_cache(num_blocks)
    out = executor.execute(model_input)  # StepOutput from rank 0
    executor.start_profile("/tmp/prof", 8)  # every rank profiles its next 8 steps
    ...
    ranks = executor.stop_profile()  # trace.rank<r>.json + report.rank<r>.json per rank
    executor.shutdown()
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import NoReturn

import ray
import torch
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from cluster.ray_env import ensure_ray
from cluster.resources import card_resource
from engine.config import EngineConfig
from engine.devices import MemoryStats, resolve_device_name
from engine.errors import EngineDeadError
from engine.loader import KVSpec, load_config
from engine.messages import ModelInput, StepOutput
from engine.profiling.session import ProfileBusyError, RankProfile
from sharding.dist import GroupAddress, remove_shm_buffers
from sharding.worker import (
    RankLoadStats,
    RankPlacement,
    RankSetup,
    RankSpec,
    RankStats,
    TPWorker,
    to_wire,
)

__all__ = ["WORKER_NAME_PREFIX", "TPExecutor"]

logger = logging.getLogger(__name__)

# Ranks are named actors, `gaudi-serve-tp-<group id>-rank<r>`: visible in `ray list actors`.
WORKER_NAME_PREFIX = "gaudi-serve-tp-"
# bound on the ranks writing and analysing their traces at the end of a capture
PROFILE_TIMEOUT_S = 300.0
_RemoteWorker = ray.remote(max_restarts=0, max_task_retries=0, concurrency_groups={"watch": 1})(
    TPWorker
)


class TPExecutor:
    """Executor over a TP group of `config.tp_size` Ray actors (see module docstring).

    num_cpus_per_rank: logical Ray CPUs each rank reserves (fractional is fine: CPU ranks
        also get torch threads = cores / tp_size whatever this says).
    start_timeout_s: bound on placing the group and on each rank's set-up (JIT build of
        DeepSpeed's CPU all-reduce on first use + load); a failing rank raises at once.
    step_timeout_s: bound on one step; a dead rank raises at once.
    ray_address: Ray to join when this process is not connected yet (None: start a local
        one, owned and shut down by this executor).
    """

    def __init__(
        self,
        model_path: Path,
        config: EngineConfig,
        *,
        num_cpus_per_rank: float = 0.5,
        start_timeout_s: float = 600.0,
        step_timeout_s: float = 300.0,
        ray_address: str | None = None,
    ):
        self.tp_size = config.tp_size
        self.name = f"{WORKER_NAME_PREFIX}{uuid.uuid4().hex[:8]}"  # ranks: <name>-rank<r>
        self.device_name = resolve_device_name(config.device)
        # Refuse a tp_size that does not divide the KV heads before starting anything.
        KVSpec.from_config(load_config(model_path), torch.float32, self.tp_size)
        self.step_timeout_s = step_timeout_s
        self._start_timeout_s = start_timeout_s
        self._workers: list[ray.actor.ActorHandle] = []
        self._watches: list[ray.ObjectRef] = []
        self._placements: list[RankPlacement] = []
        self._address: GroupAddress | None = None
        self._pg: PlacementGroup | None = None
        self._owns_pg = False
        self._dead_reason: str | None = None
        self._runner_stats: dict[str, int] | None = None
        # A capture's steps (None: none runs) and how many were sent so far. NOTE: step
        # and profile calls are sent under _send_lock, so every rank sees them in the
        # same order and profiles the same steps.
        self._send_lock = threading.Lock()
        self._num_profile_steps: int | None = None
        self._num_profiled_steps = 0
        self._owns_ray = ensure_ray(ray_address)
        # A safety net for owners that never call shutdown (killed ranks leave /dev/shm
        # buffers behind); registered after ray.init, so it runs before Ray's own.
        atexit.register(self.shutdown)
        try:
            setups = self._start(model_path, config, num_cpus_per_rank)
        except BaseException:
            self._dead_reason = "start-up failed"
            self.shutdown()
            raise
        # Set up from rank 0's device (the driver may see no card at all).
        self.kv_spec: KVSpec = setups[0].kv_spec  # per rank
        self.default_kv_memory_fraction: float = setups[0].default_kv_memory_fraction
        self.graph_kinds: tuple[str, ...] = setups[0].graph_kinds
        self.load_stats: list[RankLoadStats] = [s.load for s in setups]

    # -- start-up -----------------------------------------------------------------------
    def _start(
        self, model_path: Path, config: EngineConfig, num_cpus_per_rank: float
    ) -> list[RankSetup]:
        bundles = self._reserve_bundles(num_cpus_per_rank)
        self._workers = [
            _RemoteWorker.options(
                name=f"{self.name}-rank{rank}",
                **_actor_resources(bundle),
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=rank
                ),
            ).remote(rank, self.tp_size)
            for rank, bundle in enumerate(bundles)
        ]
        self._watches = [w.watch.remote() for w in self._workers]  # ready = rank died
        self._placements = self._call_all("placement", (), self._start_timeout_s)
        nodes = {p.node_id for p in self._placements}
        if len(nodes) != 1:
            raise RuntimeError(f"TP ranks landed on {len(nodes)} nodes; a group needs one node")
        self._address = GroupAddress("127.0.0.1", self._placements[0].free_port)
        spec = RankSpec(
            model_path=Path(model_path).resolve(),
            device_name=self.device_name,
            dtype_name=config.dtype,
            block_size=config.block_size,
            address=self._address,
            group_accelerator_ids=tuple(i for p in self._placements for i in p.accelerator_ids),
            timeout_s=self._start_timeout_s,
            kv_cache_dtype=config.kv_cache_dtype,
            quantization=config.quantization,
            quantization_stats=config.quantization_stats,
        )
        return self._call_all("setup", (spec,), self._start_timeout_s)

    def _reserve_bundles(self, num_cpus_per_rank: float) -> list[dict[str, float]]:
        """Use the placement group this process runs in (a Serve replica with
        placement_group_bundles: rank i takes bundle i), or create one (STRICT_PACK)."""
        current = get_current_placement_group()
        if current is not None:
            specs = current.bundle_specs
            if len(specs) < self.tp_size:
                raise ValueError(
                    f"tp_size {self.tp_size} needs {self.tp_size} bundles, but this process's "
                    f"placement group has {len(specs)}: {specs}"
                )
            self._pg = current
            return specs[: self.tp_size]
        card = card_resource(self.device_name)  # None: the rank takes a CPU share only
        bundle = {"CPU": num_cpus_per_rank} | ({card: 1.0} if card else {})
        self._pg = placement_group([dict(bundle)] * self.tp_size, strategy="STRICT_PACK")
        self._owns_pg = True
        try:
            ray.get(self._pg.ready(), timeout=self._start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"could not place {self.tp_size} bundles {bundle} on one node within "
                f"{self._start_timeout_s:.0f} s; available: {ray.available_resources()}"
            ) from None
        return [bundle] * self.tp_size

    def _call_all(self, method: str, args: tuple, timeout_s: float) -> list:
        """Call `method` on every rank; return the results in rank order. The first rank
        to fail raises at once (its peers may be blocked on it forever); a rank that does
        not answer within timeout_s raises TimeoutError."""
        refs = [getattr(w, method).remote(*args) for w in self._workers]
        return self._wait_all(method, refs, timeout_s)

    def _wait_all(self, method: str, refs: list[ray.ObjectRef], timeout_s: float) -> list:
        """The results of `method` sent to every rank (`refs`, in rank order); raises as
        _call_all."""
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        deadline = time.monotonic() + timeout_s
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                ranks = sorted(rank_of[r] for r in pending)
                raise TimeoutError(
                    f"TP ranks {ranks} did not finish {method}() within {timeout_s:.0f} s"
                )
            for ref in ready:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise RuntimeError(
                        f"TP rank {rank_of[ref]} of {self.tp_size} failed in {method}(): "
                        f"{_cause(exc)}"
                    ) from exc
        return ray.get(refs)

    # -- the Executor protocol ----------------------------------------------------------
    def available_kv_bytes(self, memory_fraction: float) -> int:
        per_rank = min(self._call_all("available_kv_bytes", (memory_fraction,), 60.0))
        # CPU ranks share one host's memory: each gets its part of the fraction.
        return per_rank // self.tp_size if self.device_name == "cpu" else per_rank

    def init_kv_cache(self, num_blocks: int) -> None:
        self._call_all("init_kv_cache", (num_blocks,), self._start_timeout_s)

    def warmup(self, inp: ModelInput, capture: bool) -> None:
        self._call_all("warmup", (to_wire(inp), capture), self._start_timeout_s)
        self._runner_stats = None

    def runner_stats(self) -> dict[str, int]:
        """Rank 0's graph/eager counters (every rank runs the same steps) as of the last
        step: no remote call, so a stats reader never waits for a running step."""
        if self._runner_stats is None:
            self._runner_stats = self._call_all("runner_stats", (), 60.0)[0]
        return self._runner_stats

    def memory_stats(self) -> MemoryStats:
        """The rank with the least free memory."""
        return min(self._call_all("memory_stats", (), 60.0), key=lambda m: m.free_bytes)

    def execute(self, inp: ModelInput) -> StepOutput:
        """One step on every rank; returns rank 0's accepted tokens per row.
        Raises EngineDeadError when a rank died or the step took longer than
        step_timeout_s."""
        if self._dead_reason is not None:
            raise EngineDeadError(f"the tensor-parallel group is dead: {self._dead_reason}")
        wire_inp = to_wire(inp)
        with self._send_lock:
            refs = [w.execute.remote(wire_inp) for w in self._workers]
            wanted = self._num_profile_steps
            if wanted is not None and self._num_profiled_steps < wanted:
                self._num_profiled_steps += 1
        try:
            # NOTE: ray.get raises as soon as any rank's result is an error, without
            # waiting for peers that may be stuck in a collective with the dead rank.
            result = ray.get(refs, timeout=self.step_timeout_s)[0]
        except ray.exceptions.GetTimeoutError as exc:
            self._fail(f"a step took longer than {self.step_timeout_s:.0f} s", exc)
        except ray.exceptions.RayError as exc:
            rank = _first_failed(refs)
            self._fail(f"TP rank {rank} of {self.tp_size} failed: {_cause(exc)}", exc)
        self._runner_stats = result.runner_stats
        return result.output

    def _fail(self, reason: str, exc: BaseException) -> NoReturn:
        """A step failed: tear the group down (peers of a dead rank may spin in a
        collective forever) and raise EngineDeadError, which fails the requests in flight."""
        self._dead_reason = reason
        logger.error("tensor-parallel group %s failed, tearing it down: %s", self.name, reason)
        self._teardown()
        raise EngineDeadError(f"the tensor-parallel group failed: {reason}") from exc

    @property
    def is_healthy(self) -> bool:
        """False once a step failed, a rank died (even while idle) or after shutdown.
        Cheap and non-blocking: fine to read from an event loop."""
        if self._dead_reason is None and self._workers:
            dead, _ = ray.wait(self._watches, num_returns=1, timeout=0)
            if dead:
                rank = self._watches.index(dead[0])
                self._dead_reason = f"TP rank {rank} of {self.tp_size} died"
                logger.error("tensor-parallel group %s: %s", self.name, self._dead_reason)
        return self._dead_reason is None and bool(self._workers)

    def shutdown(self) -> None:
        """Stop every rank and delete the group's /dev/shm buffers. Idempotent."""
        if self._workers and self._dead_reason is None:
            try:
                self._call_all("shutdown", (), 30.0)
            except (RuntimeError, TimeoutError) as exc:
                logger.warning("TP ranks did not shut down cleanly: %s", exc)
        self._dead_reason = self._dead_reason or "shut down"
        self._teardown()
        atexit.unregister(self.shutdown)

    # -- profiling (engine.profiling.session) -------------------------------------------
    def start_profile(self, out_dir: str, num_steps: int, modules: bool = True) -> None:
        """Every rank profiles its next `num_steps` steps (the same steps on all ranks).
        Raises ProfileBusyError while a capture runs, ValueError for num_steps < 1."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        with self._send_lock:
            if self._num_profile_steps is not None:
                raise ProfileBusyError(
                    f"tensor-parallel group {self.name} is already profiling "
                    f"({self._num_profiled_steps} of {self._num_profile_steps} steps)"
                )
            self._num_profile_steps, self._num_profiled_steps = num_steps, 0
            refs = [w.start_profile.remote(out_dir, num_steps, modules) for w in self._workers]
        try:
            self._wait_all("start_profile", refs, 60.0)
        except BaseException:
            self._num_profile_steps = None
            raise

    @property
    def num_profiled_steps(self) -> int:
        """Steps sent to the ranks since start_profile, up to the steps asked for."""
        return self._num_profiled_steps if self._num_profile_steps is not None else 0

    def stop_profile(self) -> list[RankProfile]:
        """End the capture on every rank (early if steps are missing); each writes
        trace.rank<r>.json and report.rank<r>.json. One RankProfile per rank."""
        with self._send_lock:
            if self._num_profile_steps is None:
                raise RuntimeError(f"tensor-parallel group {self.name} is not profiling")
            self._num_profile_steps = None
            refs = [w.stop_profile.remote() for w in self._workers]
        return self._wait_all("stop_profile", refs, PROFILE_TIMEOUT_S)

    # -- introspection (tests, benchmarks) ----------------------------------------------
    def rank_stats(self) -> list[RankStats]:
        """Steps run and time spent inside `execute`, per rank."""
        return self._call_all("stats", (), 60.0)

    @property
    def workers(self) -> list[ray.actor.ActorHandle]:
        return list(self._workers)

    @property
    def placement_group(self) -> PlacementGroup | None:
        """The group's placement group: the caller's own, or one this executor created."""
        return self._pg

    @property
    def placements(self) -> list[RankPlacement]:
        return list(self._placements)

    @property
    def address(self) -> GroupAddress | None:
        return self._address

    # -- teardown -----------------------------------------------------------------------
    def _teardown(self) -> None:
        workers, self._workers, self._watches = self._workers, [], []
        for worker in workers:
            ray.kill(worker, no_restart=True)
        _wait_dead(workers, self._placements[: len(workers)], timeout_s=30.0)
        if self._address is not None:
            self._remove_shm_buffers()
        if self._owns_pg and self._pg is not None:
            remove_placement_group(self._pg)
            self._owns_pg = False
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def _remove_shm_buffers(self) -> None:
        """Killed ranks leave their buffers behind: delete them on the group's node."""
        node_id = self._placements[0].node_id
        if node_id == ray.get_runtime_context().get_node_id():
            remove_shm_buffers(self._address)
            return
        task = _remove_shm_buffers_task.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        )
        try:
            ray.get(task.remote(self._address), timeout=30.0)
        except ray.exceptions.RayError as exc:
            logger.warning("could not remove the group's /dev/shm buffers: %s", exc)


@ray.remote
def _remove_shm_buffers_task(address: GroupAddress) -> None:
    remove_shm_buffers(address)


def _actor_resources(bundle: dict[str, float]) -> dict:
    """Actor options asking for exactly one bundle."""
    extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
    options: dict = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}
    if extra:
        options["resources"] = extra
    return options


def _wait_dead(workers: list, placements: list[RankPlacement], timeout_s: float) -> None:
    """ray.kill is asynchronous: wait until the killed ranks' processes have exited (their
    memory and cards are free again) when they ran on this node, else until Ray reports
    the actors dead."""
    deadline = time.monotonic() + timeout_s
    local_node = ray.get_runtime_context().get_node_id()
    local_pids = [p.pid for p in placements if p.node_id == local_node]
    while any(_is_process_alive(pid) for pid in local_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for worker in workers:
        try:
            ray.get(worker.stats.remote(), timeout=max(0.0, deadline - time.monotonic()))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue


def _is_process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _first_failed(refs: list[ray.ObjectRef]) -> int | str:
    """The rank whose step result is an error (a dead actor's is, at once)."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    for rank, ref in enumerate(refs):
        if ref in ready:
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayError:
                return rank
    return "?"


def _cause(exc: BaseException) -> str:
    """The first line of a Ray error: the rank's own exception, without Ray's framing."""
    cause = getattr(exc, "cause", None)
    is_task_error = isinstance(exc, ray.exceptions.RayTaskError) and cause is not None
    text = (repr(cause) if is_task_error else str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
