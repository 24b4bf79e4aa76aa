"""What one engine step did, for whoever mirrors the replica (a router's feed).

After every step (`Engine._step`: serving, `warm_up` and offline generation alike) an
engine with a step observer hands it a `StepRecord`: the step's size and wall time (what a
step-time model fits, autoscale/step_time.py) and the prefix cache's block events drained
right after it (engine/block_events.py). When those events overflowed the block manager's
log (or a snapshot was requested: `Engine.request_block_snapshot`), the record also
carries the full set of cached block hashes, taken right after the drain (nothing runs in
between on the stepping thread), so the mirror resyncs from it.

NOTE: the observer runs on the stepping thread, inside the step loop: it must be cheap,
thread-safe and never block (e.g. append the record to a deque and return).

Loads nothing heavy: importing it loads no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from engine.block_events import BlockEventBatch


class StepRecord(NamedTuple):
    """One engine step. kind: "prefill" or "decode" (`StepKind` values; a speculative
    verify step is a decode step whose rows feed several tokens each)."""

    kind: str
    num_tokens: int  # real tokens fed (padding excluded)
    num_rows: int  # sequences in the step
    num_context_tokens: int  # tokens already in the KV cache the rows attended to, summed
    seconds: float  # wall time of the whole step (scheduling to outputs processed)
    block_events: BlockEventBatch  # the block manager's drain right after the step
    # every hash findable in the prefix cache right after that drain (a fresh set the
    # observer owns); only when block_events overflowed or a snapshot was requested
    # (Engine.request_block_snapshot), else None
    snapshot: set[int] | None


StepObserver = Callable[[StepRecord], None]
