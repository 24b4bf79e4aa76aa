"""One simulated replica: the engine's own scheduler and block manager, with the forward
replaced by a step-time model.

`SimReplica` builds a real `StepShaper`, `Scheduler` and `BlockManager` from an
`EngineConfig` with the constructors `Engine.__init__` uses (engine.scheduler's
`step_shaper` and `build_scheduler`), and runs the engine's step loop (`Engine._step` /
`Engine._process`) over them in virtual time:

    start_step(t):  sched = scheduler.schedule(); work = its StepWork (real sizes and the
                    bucket the runner pads it to: engine.model_input.step_shape);
                    the step ends at t + cost.step_s(work)
    finish_step():  every sampled row takes one placeholder token (outputs have a fixed
                    length: the trace's output_tokens, EOS ignored), num_computed_tokens
                    and publish_computed_blocks advance as in Engine._process, finished
                    requests are freed, and the block events drained into a StepRecord
                    (with a snapshot when the log overflowed or the feed asked for one)

Nothing else of the engine runs: no tokenizer, no detokenizer, no sampling. Prompts are
real token ids (autoscale/sim/trace.py), so prefix-cache hits and the block hashes the
router mirrors are the engine's. The requests' steps, first tokens and completions come
back as `StepOutcome`s stamped with the step's end time.

A replica advances on its own between fleet events (`advance_to`): nothing another
replica does changes its steps, only a request added to it.

Collapsing: with `collapse` on, a decode run (the same rows decoding step after step;
`_start_run`, `_decode_run_limit`) runs without calling `schedule()` and the per-row
bookkeeping every step: only the rows at a block boundary call the real
`publish_computed_blocks` / `append_slots`, in the engine's order; with nothing waiting,
a row that reaches its length finishes inside the run (freed as `Engine._process` frees
it) and the run goes on with the rest; the run stops where the real scheduler would
preempt or could admit a request, and after its step in flight when a request is added.
A run is kept across `advance_to` calls, so advancing a replica one step costs one
step's arithmetic, not a run's set-up. The result is identical (tests/autoscale/sim: the
real engine's steps, finishes inside runs, and whole fleet runs with and without it).

The feed (`updates_until`) is read in chunks its event log holds whole, and its log is
sized to one step's events (`feed_max_events`): the one session never needs more.

Its autoscaling metrics (`metrics`) are the fields deployments/autoscaling_stats.py
reports, through the same encode/decode as the Serve adapter.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from autoscale.replica_feed import MAX_STEPS, ReplicaFeed
from autoscale.replica_update import ReplicaUpdate, StepSample
from autoscale.serve_autoscaling import decode_replica_stats, encode_replica_stats
from autoscale.sim.step_cost import DECODE, PREFILL, StepCost, StepWork
from autoscale.sim.trace import FIRST_TOKEN_ID
from autoscale.slo_capacity import summarize_step_time
from autoscale.slo_policy import ReplicaMetrics
from autoscale.step_time import StepTimeModel
from deployments.autoscaling_stats import LatencyWindow
from engine.config import EngineConfig
from engine.model_input import step_shape
from engine.sampling_params import SamplingParams
from engine.scheduler import SchedulerOutput, StepKind, build_scheduler, step_shaper
from engine.sequence import Sequence
from engine.shapes import StepShape
from engine.step_record import StepRecord

NO_LIMIT = sys.maxsize  # a decode run's steps when nothing bounds them
PLACEHOLDER_TOKEN_ID = FIRST_TOKEN_ID  # every generated token (the sim samples nothing)
FEED_SESSION = "sim-router"  # the router's session on each replica's feed
FEED_MAX_RECORDS = 1024  # step records per read of the feed (its inbox holds 4096)
FEED_MIN_EVENTS = 256


def feed_max_events(config: EngineConfig) -> int:
    """The event log a replica's feed keeps. Its one session reads every chunk of steps
    (`SimReplica.updates_until`), so the log need only hold one step's events: a step
    stores at most a block per block it fills (its tokens over block_size, plus one per
    row) and evicts about as many (more when it admits long prompts: it takes their
    blocks at once); a step with more events than the log holds sends the session a
    snapshot, the same state taken whole. A short log keeps the feed small."""
    blocks = config.max_num_batched_tokens // config.block_size + config.max_num_seqs
    return max(FEED_MIN_EVENTS, 4 * blocks)


def kv_cache_blocks(config: EngineConfig, kv_cache_tokens: int) -> int:
    """Blocks of a replica whose KV cache holds kv_cache_tokens, as `Engine._size_kv_cache`
    counts them: whole blocks plus the padding block. ValueError when it holds less than
    max_model_len (the engine refuses to start)."""
    num_blocks = kv_cache_tokens // config.block_size
    if config.max_model_len is not None and num_blocks * config.block_size < config.max_model_len:
        raise ValueError(
            f"kv_cache_tokens {kv_cache_tokens} holds fewer than max_model_len "
            f"{config.max_model_len} tokens: raise it or lower max_model_len"
        )
    return num_blocks + 1


# NamedTuples from a tuple of their fields, without a Python-level call (once per step).
_new_work = partial(tuple.__new__, StepWork)
_new_sample = partial(tuple.__new__, StepSample)
_new_record = partial(tuple.__new__, StepRecord)


@dataclass(eq=False)
class SimRequest:
    """A request on its way through the fleet (times in virtual seconds)."""

    index: int  # position in the trace
    request_id: str
    arrival_s: float
    prompt_token_ids: list[int]
    output_tokens: int  # max_tokens, EOS ignored
    replica: str | None = None
    added_s: float | None = None  # when its replica's engine took it
    first_token_s: float | None = None
    finish_s: float | None = None
    num_generated: int = 0
    num_cached_tokens: int = 0
    seq: Sequence | None = field(default=None, repr=False)
    # The prompt's block hashes at its replica's block size (kv_routing.prompt_block_hashes:
    # the engine's own hash), when the fleet computed them: the router ranks by them and
    # the engine's Sequence starts with them (Sequence.prefix_hashes), hashed once.
    block_hashes: tuple[int, ...] | None = field(default=None, repr=False)


class StepOutcome(NamedTuple):
    """What one step changed that the fleet acts on."""

    end_s: float
    first_tokens: list[SimRequest]
    finished: list[SimRequest]


class _Step(NamedTuple):
    """The step in flight."""

    sched: SchedulerOutput | None  # None: a decode run's step after a row left the run
    start_s: float
    end_s: float
    num_context_tokens: int
    num_tokens: int


@dataclass(eq=False)
class _Run:
    """A decode run in progress (`SimReplica._start_run`); per row, in the scheduler's
    order: its sequence, the position it fed at the run's step 0, the steps whose token
    it has appended, and the step whose end finishes it."""

    seqs: list[Sequence]
    base: list[int]
    applied: list[int]
    finish_at: list[int]
    max_blocks: int  # the widest row's blocks at the step in flight
    shape: StepShape  # the step in flight's bucket
    limit: int  # the run is its steps 0 .. limit - 1
    j: int = 0  # steps of the run that have ended; the step in flight is step j
    by_phase: list[list[int]] = field(default_factory=list)  # rows at a boundary, by j % bs
    next_finish: int = 0  # the first step whose end finishes a row
    sched: SchedulerOutput | None = None  # its first step's, until a row leaves

    def index_phases(self, block_size: int) -> None:
        """by_phase and next_finish from the rows."""
        self.by_phase = [[] for _ in range(block_size)]
        for i, p in enumerate(self.base):
            self.by_phase[(block_size - (p + 1) % block_size) % block_size].append(i)
        self.next_finish = min(self.finish_at, default=NO_LIMIT)

    def drop(self, rows: list[int], block_size: int) -> None:
        """Rows (indices) leave the run."""
        gone = set(rows)
        keep = [i for i in range(len(self.seqs)) if i not in gone]
        self.seqs = [self.seqs[i] for i in keep]
        self.base = [self.base[i] for i in keep]
        self.applied = [self.applied[i] for i in keep]
        self.finish_at = [self.finish_at[i] for i in keep]
        self.index_phases(block_size)
        self.sched = None  # the rows are self.seqs (nothing reads a run step's sched)


class SimReplica:
    """One replica's engine in virtual time (module doc)."""

    def __init__(
        self,
        name: str,
        config: EngineConfig,
        num_blocks: int,
        cost: StepCost,
        *,
        startup_s: float | None = None,
        publish: bool = True,
        collapse: bool = True,
    ):
        """config: with max_model_len resolved (Engine resolves it against the model).
        num_blocks: KV blocks including the padding block (`kv_cache_blocks`).
        publish: hand each step's StepRecord to a `ReplicaFeed` (for the kv_aware router).
        """
        if config.max_model_len is None:
            raise ValueError("config.max_model_len must be resolved (an int), got None")
        if config.speculative is not None:
            raise ValueError(
                "speculative decoding is not simulated: set speculative to None "
                f"(got {config.speculative.method!r})"
            )
        self.name = name
        self.config = config
        self.cost = cost
        self.startup_s = startup_s
        self.collapse = collapse
        # The engine's own constructors (Engine.__init__ builds its scheduler with them).
        self.shaper = step_shaper(config)
        self.scheduler = build_scheduler(config, self.shaper, num_blocks)
        self.block_manager = self.scheduler.block_manager
        self.requests: dict[str, SimRequest] = {}  # in flight here, by request id
        self.num_prefill_tokens = 0
        self.num_generated_tokens = 0
        self.num_steps = 0
        self.busy_s = 0.0
        self.step: _Step | None = None
        self._run: _Run | None = None  # the decode run the step in flight belongs to
        self._decode_shapes: dict[tuple[int, int], StepShape] = {}
        self.idle_since_s = 0.0
        self.ttft = LatencyWindow()
        self.tpot = LatencyWindow()
        self.recent_steps: deque[StepSample] = deque(maxlen=MAX_STEPS)
        self._max_events = feed_max_events(config)
        self.feed = (
            ReplicaFeed(name, self._max_events, request_snapshot=self._request_snapshot)
            if publish
            else None
        )
        self._unpublished: deque[tuple[float, StepRecord]] = deque()
        self._is_snapshot_requested = False
        self._max_model_len = config.max_model_len

    # -- requests -----------------------------------------------------------------------
    def add(self, request: SimRequest, now: float) -> None:
        """The engine takes the request (Engine.add_request, without the checks the fleet
        did: the prompt fits max_model_len)."""
        params = SamplingParams(max_tokens=request.output_tokens, ignore_eos=True)
        seq = Sequence(request.request_id, request.prompt_token_ids, params, 0)
        if request.block_hashes is not None:
            seq.prefix_hashes = list(request.block_hashes)
        request.seq, request.replica, request.added_s = seq, self.name, now
        self.requests[request.request_id] = request
        self.scheduler.add(seq)
        if self._run is not None:  # the scheduler forms the step after the one in flight
            self._run.limit = min(self._run.limit, self._run.j + 1)

    @property
    def num_ongoing(self) -> int:
        """Requests in flight here (Serve's ongoing requests of the replica)."""
        return len(self.requests)

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_unfinished

    # -- stepping -----------------------------------------------------------------------
    def start_step(self, now: float) -> float | None:
        """Schedule the next step at now; returns when it ends (None: nothing to run)."""
        sched = self.scheduler.schedule()
        if sched is None:
            self.step = None
            return None
        items = sched.scheduled
        num_context = sum(item.seq.num_computed_tokens for item in items)
        num_tokens = sum(item.num_tokens for item in items)
        kind = PREFILL if sched.kind is StepKind.PREFILL else DECODE
        work = StepWork(kind, len(items), num_tokens, num_context, step_shape(sched, self.shaper))
        end = now + self.cost.step_s(work)
        self.step = _Step(sched, now, end, num_context, num_tokens)
        return end

    def finish_step(self) -> StepOutcome:
        """The step in flight ends: Engine._process's bookkeeping, then its record."""
        step = self.step
        sched, end = step.sched, step.end_s
        bm = self.block_manager
        is_prefill = sched.kind is StepKind.PREFILL
        first_tokens: list[SimRequest] = []
        finished: list[SimRequest] = []
        for item in sched.scheduled:
            seq = item.seq
            if is_prefill:
                self.num_prefill_tokens += item.num_tokens
            if not item.is_sampled:
                seq.num_computed_tokens += item.num_tokens
                bm.publish_computed_blocks(seq)
                continue
            seq.token_ids.append(PLACEHOLDER_TOKEN_ID)
            self.num_generated_tokens += 1
            request = self.requests[seq.request_id]
            if request.first_token_s is None:
                request.first_token_s = end
                self.ttft.add(end - request.added_s, end)
                first_tokens.append(request)
            seq.num_computed_tokens = seq.num_tokens - 1
            bm.publish_computed_blocks(seq)
            if self._is_done(seq):
                finished.append(request)
            else:
                bm.trim(seq, seq.num_tokens)
        for request in finished:
            self._finish(request, end)
        self._record_step(sched.kind.value, step, end - step.start_s)
        self.step = None
        return StepOutcome(end, first_tokens, finished)

    def _is_done(self, seq: Sequence) -> bool:
        """check_stop with EOS ignored: max_tokens or max_model_len reached."""
        return (
            seq.num_tokens - seq.num_prompt_tokens >= seq.params.max_tokens
            or seq.num_tokens >= self._max_model_len
        )

    def _finish(self, request: SimRequest, end: float) -> None:
        seq = request.seq
        self.scheduler.finish(seq)
        request.finish_s = end
        request.num_generated = seq.num_output_tokens
        request.num_cached_tokens = seq.num_cached_tokens
        request.seq = None
        del self.requests[request.request_id]
        if request.num_generated > 1:
            tpot = (end - request.first_token_s) / (request.num_generated - 1)
            self.tpot.add(tpot, end)

    def _record_step(self, kind: str, step: _Step, seconds: float) -> None:
        self.num_steps += 1
        self.busy_s += seconds
        size = step.num_tokens if kind == PREFILL else len(step.sched.scheduled)
        self.recent_steps.append(StepSample(kind, size, seconds, step.num_context_tokens))
        if self.feed is None:
            return
        bm = self.block_manager
        events = bm.drain_events()
        snapshot = None
        if events.overflowed or self._is_snapshot_requested:
            self._is_snapshot_requested = False
            snapshot = bm.cached_block_hashes()
        record = StepRecord(
            kind,
            step.num_tokens,
            len(step.sched.scheduled),
            step.num_context_tokens,
            seconds,
            events,
            snapshot,
        )
        self._unpublished.append((step.end_s, record))

    def _request_snapshot(self) -> None:
        self._is_snapshot_requested = True

    def advance_to(
        self, t: float, on_outcome: Callable[[StepOutcome], None], *, stop_on_finish: bool = False
    ) -> None:
        """Run every step that ends at or before t, starting each next one at once. Each
        step run one by one is reported (on_outcome) after the next step has started, so
        a request added then waits for the step after it; the steps of a decode run
        (`_start_run`) finish nothing and are not reported.
        stop_on_finish: return right after a step that finished a request (the fleet has
        requests waiting for a free slot)."""
        while self.step is not None and self.step.end_s <= t:
            if self.collapse and (self._run is not None or self._start_run()):
                outcome = self._advance_run(t)
                if outcome is not None:
                    on_outcome(outcome)
                    if stop_on_finish:
                        return
                continue
            outcome = self.finish_step()
            if self.start_step(outcome.end_s) is None:
                self.idle_since_s = outcome.end_s
            on_outcome(outcome)
            if stop_on_finish and outcome.finished:
                return

    def wake(self, now: float) -> float | None:
        """Start a step at now if the replica is idle and has work; its end, or None."""
        if self.step is None and self.scheduler.has_unfinished:
            return self.start_step(now)
        return None

    @property
    def next_end_s(self) -> float | None:
        return None if self.step is None else self.step.end_s

    def stop(self) -> list[SimRequest]:
        """The replica is stopped (drain timeout): its step in flight never ends and every
        request still here is lost; returns them, with the tokens they had generated."""
        if self._run is not None:
            self._end_run()
        self.step = None
        lost = list(self.requests.values())
        for request in lost:
            seq = request.seq
            request.num_generated = seq.num_output_tokens
            request.num_cached_tokens = seq.num_cached_tokens
            self.scheduler.abort(seq)
            request.seq = None
        self.requests.clear()
        return lost

    # -- collapsing plain decode steps --------------------------------------------------
    def _start_run(self) -> bool:
        """Set up a decode run from the step in flight (which ends by the caller's t);
        False when that step does not start one (`_decode_run_limit`).

        A run repeats one decode step over the same rows. Each step j, row i feeds
        position base[i] + j. A row at a block boundary ((position + 1) % block_size == 0)
        publishes the block it filled when the step ends and takes a new block when the
        next step is scheduled: for those rows alone the real `publish_computed_blocks`
        and `append_slots` run, in row order, as `Engine._process` and `_schedule_decode`
        would call them; the other rows' tokens are appended in bulk when the run ends.
        A row that reaches its length finishes inside the run (`_finish_run_rows`) when
        nothing waits: the engine's next step is then a decode of the rows left. The run
        stops before a step that would need more free blocks than there are (the real
        scheduler then preempts), at its limit, when no row is left, and after its step
        in flight when a request is added (`add`). It is kept across `advance_to` calls."""
        limit = self._decode_run_limit()
        if limit < 1:
            return False
        seqs = [item.seq for item in self.step.sched.scheduled]
        max_len = self._max_model_len
        # Step j's end appends token j + 1 of the run: it finishes the row when that
        # reaches max_tokens or max_model_len.
        finish_at = [  # (num_output_tokens and num_tokens, from the token ids)
            min(
                seq.params.max_tokens - len(seq.token_ids) + seq.num_prompt_tokens,
                max_len - len(seq.token_ids),
            )
            - 1
            for seq in seqs
        ]
        base = [len(seq.token_ids) - 1 for seq in seqs]  # the position each row feeds at j = 0
        bs = self.block_manager.block_size
        max_blocks = max(-(-(p + 1) // bs) for p in base)
        shape = self._decode_shape(len(seqs), max_blocks)
        run = _Run(seqs, base, [0] * len(seqs), finish_at, max_blocks, shape, limit)
        run.index_phases(bs)
        run.sched = self.step.sched
        self._run = run
        return True

    def _advance_run(self, t: float) -> StepOutcome | None:
        """Run the decode run's steps that end by t (the step in flight does); returns
        after a step that finished requests, with its outcome."""
        run, step = self._run, self.step
        bm, cost = self.block_manager, self.cost
        free_blocks, bs = bm.free_blocks, bm.block_size
        start, end, context = step.start_s, step.end_s, step.num_context_tokens
        max_blocks, shape, j = run.max_blocks, run.shape, run.j
        seqs, applied, num_rows = run.seqs, run.applied, len(run.seqs)
        while True:
            rows = run.by_phase[j % bs]
            for i in rows:  # step j ends: these rows fill a block and publish it
                seq = seqs[i]
                seq.token_ids.extend([PLACEHOLDER_TOKEN_ID] * (j + 1 - applied[i]))
                applied[i] = j + 1
                seq.num_computed_tokens = seq.num_tokens - 1
                bm.publish_computed_blocks(seq)
            finished = self._finish_run_rows(j, end) if j == run.next_finish else ()
            self._record_plain(start, end, context, num_rows)
            step_end = end
            self.num_generated_tokens += num_rows
            j += 1
            if finished:
                seqs, applied, num_rows = run.seqs, run.applied, len(run.seqs)
                rows = run.by_phase[(j - 1) % bs]
                max_blocks = max((len(seq.block_table) for seq in seqs), default=0)
                context = sum(run.base) + (j - 1) * num_rows  # step j - 1's, for those left
            if not num_rows or j >= run.limit or len(rows) > len(free_blocks):
                run.j = j
                self._end_run()  # the real scheduler forms step j
                self.step = None
                if self.start_step(end) is None:
                    self.idle_since_s = end
                return StepOutcome(end, [], finished) if finished else None
            for i in rows:  # step j is scheduled: these rows take a block
                bm.append_slots(seqs[i])
                max_blocks = max(max_blocks, len(seqs[i].block_table))
            if rows or finished:
                shape = self._decode_shape(num_rows, max_blocks)
            start, context = end, context + num_rows
            end = start + cost.step_s(_new_work((DECODE, num_rows, num_rows, context, shape)))
            if end > t or finished:
                run.j, run.max_blocks, run.shape = j, max_blocks, shape
                self.step = _Step(run.sched, start, end, context, num_rows)
                return StepOutcome(step_end, [], finished) if finished else None

    def _finish_run_rows(self, j: int, end: float) -> list[SimRequest]:
        """The rows whose last token step j gave finish (Engine._process: after every row
        published, in row order) and leave the run; their requests."""
        run = self._run
        done = [i for i, n in enumerate(run.finish_at) if n == j]
        finished = []
        for i in done:
            seq = run.seqs[i]
            seq.token_ids.extend([PLACEHOLDER_TOKEN_ID] * (j + 1 - run.applied[i]))
            seq.num_computed_tokens = seq.num_tokens - 1
            finished.append(self.requests[seq.request_id])
        for request in finished:
            self._finish(request, end)
        run.drop(done, self.block_manager.block_size)
        return finished

    def _decode_shape(self, num_rows: int, max_blocks: int) -> StepShape:
        """shaper.decode_shape, remembered (a pure function of its arguments)."""
        key = (num_rows, max_blocks)
        shape = self._decode_shapes.get(key)
        if shape is None:
            shape = self._decode_shapes[key] = self.shaper.decode_shape(num_rows, max_blocks)
        return shape

    def _end_run(self) -> None:
        """Bring every row of the run up to date (the tokens of the steps that ended)."""
        run = self._run
        j, applied = run.j, run.applied
        for i, seq in enumerate(run.seqs):
            if applied[i] < j:
                seq.token_ids.extend([PLACEHOLDER_TOKEN_ID] * (j - applied[i]))
            seq.num_computed_tokens = seq.num_tokens - 1
        self._run = None

    def _decode_run_limit(self) -> int:
        """How many steps from the one in flight a run may take (0: none): it is a decode
        step of every running row. With nothing waiting, no limit (rows finish inside
        it). With requests waiting, only steps that finish no row and are plain (no row
        at a block boundary), during which nothing that decides their admission changes:
        free blocks, cached hashes, running rows; and none if the head could be admitted
        now. A request added during a run ends it after its step in flight (`add`)."""
        sched = self.step.sched
        if sched.kind is not StepKind.DECODE:
            return 0
        scheduler, bs = self.scheduler, self.block_manager.block_size
        items = sched.scheduled
        if len(items) != len(scheduler.running):
            return 0
        if not scheduler.waiting:
            return NO_LIMIT
        if self._can_admit_after_step():
            return 0
        max_len = self._max_model_len
        num = NO_LIMIT
        for item in items:
            seq = item.seq
            # Steps before the one that finishes the row (`_start_run`) and before the
            # first whose end publishes a block.
            remaining = seq.params.max_tokens - seq.num_output_tokens
            n = min(remaining, max_len - seq.num_tokens) - 1
            num = min(num, n, (bs - seq.num_tokens % bs) % bs)
            if num < 1:
                return 0
        return num

    def _can_admit_after_step(self) -> bool:
        """Whether the waiting head could be admitted were the next step scheduled now."""
        scheduler = self.scheduler
        if len(scheduler.running) >= scheduler.max_num_seqs:
            return False
        return self.block_manager.can_allocate(scheduler.waiting[0])

    def _record_plain(self, start: float, end: float, context: int, num_rows: int) -> None:
        self.num_steps += 1
        seconds = end - start
        self.busy_s += seconds
        self.recent_steps.append(_new_sample((DECODE, num_rows, seconds, context)))
        if self.feed is not None:
            events = self.block_manager.drain_events()
            snapshot = None
            if events.overflowed or self._is_snapshot_requested:
                self._is_snapshot_requested = False
                snapshot = self.block_manager.cached_block_hashes()
            record = _new_record((DECODE, num_rows, num_rows, context, seconds, events, snapshot))
            self._unpublished.append((end, record))

    # -- what the replica tells others --------------------------------------------------
    def updates_until(self, t: float) -> list[ReplicaUpdate]:
        """The router's updates from the steps that ended by t (what the feed would have
        streamed), oldest first. The feed is read in chunks its inbox and event log hold
        whole (`feed_max_events`), so the session does not fall behind."""
        if self.feed is None:
            return []
        updates = []
        pending, feed = self._unpublished, self.feed
        while pending and pending[0][0] <= t:
            num_records = num_events = 0
            while pending and pending[0][0] <= t and num_records < FEED_MAX_RECORDS:
                n = len(pending[0][1].block_events.events)
                if num_events and num_events + n > self._max_events:
                    break  # read what the log holds whole first
                feed.on_step(pending.popleft()[1])
                num_records, num_events = num_records + 1, num_events + n
            update = feed.update_for(FEED_SESSION)
            if update is not None:
                updates.append(update)
        return updates

    def metrics(self, now: float) -> ReplicaMetrics:
        """The replica's autoscaling report now (deployments/autoscaling_stats.py's
        fields, encoded and decoded as Serve carries them)."""
        model = StepTimeModel()
        for step in self.recent_steps:
            model.observe(step.kind, step.size, step.seconds, step.num_context_tokens)
        scheduler, bm = self.scheduler, self.block_manager
        values = encode_replica_stats(
            prompt_tokens_total=self.num_prefill_tokens + bm.num_prefix_hits_tokens,
            generated_tokens_total=self.num_generated_tokens,
            num_queued_prompt_tokens=scheduler.num_queued_prompt_tokens,
            num_waiting=len(scheduler.waiting),
            num_running=len(scheduler.running),
            kv_usage=bm.usage,
            ttft_p95_s=self.ttft.p95(now),
            tpot_p95_s=self.tpot.p95(now),
            step_time=summarize_step_time(model),
            startup_s=self.startup_s,
        )
        return decode_replica_stats(self.name, now, values)

    @property
    def kv_usage(self) -> float:
        return self.block_manager.usage
