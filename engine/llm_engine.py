"""The synchronous engine of one replica: add requests, step, collect outputs.

One step = the scheduler picks sequences -> the step strategy builds padded inputs -> the
executor runs the forward and picks tokens on the device -> outputs are processed on the
host. A step yields, per row, the tokens it accepted (one for plain decoding; several for a
speculative verify step, engine.speculative), appended one by one through the stops.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm
from transformers import GenerationConfig

from engine.config import EngineConfig, resolve_max_model_len
from engine.detokenizer import IncrementalDetokenizer
from engine.errors import BucketMissError, EmptyPromptError, PromptTooLongError
from engine.executor import ExecutorFactory, default_executor_factory
from engine.families import check_tp_size, get_family
from engine.loader import load_config, load_tokenizer, resolve_model_path
from engine.messages import ModelInput, StepOutput
from engine.model_input import dummy_model_input
from engine.multimodal import MultiModalInput
from engine.output_processor import (
    RequestState,
    StopRule,
    check_stop,
    make_delta,
    make_output,
)
from engine.outputs import RequestDelta, RequestOutput, TokenLogprob
from engine.prompt_encoder import PromptEncoder
from engine.sampling_params import SamplingParams
from engine.scheduler import SchedulerOutput, StepKind, build_scheduler, step_shaper
from engine.sequence import Sequence
from engine.shapes import StepShape, StepShaper
from engine.stats import EngineStats
from engine.step_record import StepObserver, StepRecord
from engine.strategy import DecodeStrategy

if TYPE_CHECKING:
    from engine.multimodal.cross_feed import CrossAttentionFeeder
    from engine.multimodal.feed import ImageFeeder

logger = logging.getLogger(__name__)


class Engine:
    """`step_observer` (also settable as an attribute) gets a StepRecord after every step
    (engine.step_record), on the stepping thread; with none, block events are not drained
    (the block manager's bounded log overflows instead)."""

    def __init__(
        self,
        config: EngineConfig,
        executor_factory: ExecutorFactory | None = None,
        *,
        step_observer: StepObserver | None = None,
    ):
        self.model_path = resolve_model_path(config.model)
        self.hf_config = load_config(self.model_path)
        # a multimodal model's text model: its vocabulary, context length and EOS
        self.text_config = self.hf_config.get_text_config()
        self.family = get_family(self.hf_config.model_type)
        check_tp_size(self.hf_config.model_type, config.tp_size)
        # a multimodal model's vision tower runs at these patch counts (None: text only)
        self.patch_buckets = (
            self.family.patch_buckets(self.hf_config) if self.family.is_multimodal else None
        )
        self.image_feeder = self._image_feeder(config)
        self.tokenizer = None
        if not config.skip_tokenizer_init:
            self.tokenizer = load_tokenizer(resolve_model_path(config.tokenizer or self.model_path))
        self.config = config = config.replace(max_model_len=self._resolve_max_model_len(config))
        self.shaper = step_shaper(config)
        make_executor = executor_factory or default_executor_factory(config)
        self.executor = make_executor(config, self.model_path)
        self.warmed: set[StepShape] = set()
        self.warmup_s = 0.0
        try:
            self.strategy: DecodeStrategy = create_strategy(
                config, self.shaper, self.executor, self.model_path, self.tokenizer
            )
            num_blocks = self._warm_up_and_size_kv_cache()
        except BaseException:
            # NOTE: a TP executor holds rank actors and /dev/shm buffers: release them now.
            self.executor.shutdown()
            raise
        self.scheduler = build_scheduler(config, self.shaper, num_blocks)
        self.block_manager = self.scheduler.block_manager
        self.stop_rule = StopRule(self._eos_token_ids(), config.max_model_len)
        self.requests: dict[str, RequestState] = {}
        self._rng = random.Random(config.seed)
        self._counters = dict.fromkeys(
            ("prefill", "generated", "steps", "misses", "real", "padded"), 0
        )
        # CPU time of the stepping thread inside executor.execute (the forward and the
        # sampling; the threads torch runs beside it are counted by AsyncEngine).
        self.execute_thread_cpu_s = 0.0
        self.step_observer = step_observer
        self._is_snapshot_requested = False

    # -- set-up -------------------------------------------------------------------------
    def _image_feeder(self, config: EngineConfig) -> ImageFeeder | CrossAttentionFeeder | None:
        """The host side of images in steps, for a multimodal model (None: text only)."""
        if not self.family.is_multimodal:
            return None
        if config.speculative is not None:
            raise ValueError(
                f"speculative decoding does not run {self.family.name} "
                f"({self.hf_config.model_type}) models, which take images: set speculative "
                "to None"
            )
        if self.family.cross_attention is not None:
            from engine.multimodal.cross_feed import CrossAttentionFeeder

            return CrossAttentionFeeder(self.patch_buckets.counts, config.max_num_seqs)
        from engine.multimodal.feed import ImageFeeder

        return ImageFeeder(self.patch_buckets.counts)

    def _resolve_max_model_len(self, config: EngineConfig) -> int:
        model_max = getattr(self.text_config, "max_position_embeddings", None)
        return resolve_max_model_len(config.max_model_len, model_max)

    def _warm_up_and_size_kv_cache(self) -> int:
        """Warm every bucket eagerly on a one-block cache (only the padding block is
        touched), so the activation peak is taken before the KV cache is sized from what
        is left; then allocate the cache and capture graphs, which reference it."""
        strategy, is_warm = self.strategy, self.config.warmup
        shapes = self.shaper.warmup_shapes(strategy.decode_query_lens) if is_warm else []
        start = time.perf_counter()
        self._init_kv_cache(1)
        for shape in tqdm(shapes, desc="warmup", disable=None):
            self.executor.warmup(dummy_model_input(shape), capture=False)
        if is_warm:
            strategy.warmup(capture=False, graph_kinds=())
            self._warm_up_images(shapes)
        num_blocks = self._size_kv_cache()
        self._init_kv_cache(num_blocks)
        graph_kinds = self.executor.graph_kinds if self.config.enable_graphs else ()
        captured = [s for s in shapes if s.kind in graph_kinds]
        free_before = self.executor.memory_stats().free_bytes
        for shape in tqdm(captured, desc="capture graphs", disable=None):
            self.executor.warmup(dummy_model_input(shape), capture=True)
        if is_warm and graph_kinds:
            strategy.warmup(capture=True, graph_kinds=graph_kinds)
        graph_bytes = free_before - self.executor.memory_stats().free_bytes
        self.warmed = set(shapes)
        if is_warm:
            strategy.calibrate(self.executor)
        self.warmup_s = time.perf_counter() - start
        if shapes:
            logger.info(
                "warmup: %d buckets (%d with graphs) in %.1f s, graph memory %.1f MiB",
                len(shapes),
                len(captured),
                self.warmup_s,
                max(graph_bytes, 0) / 2**20,
            )
        return num_blocks

    def _warm_up_images(self, shapes: list[StepShape]) -> None:
        """Run the vision tower once at every patch bucket (a multimodal model), inside
        the smallest prefill step."""
        prefill = [s for s in shapes if s.kind == "prefill"]
        if self.image_feeder is None or not prefill:
            return
        inp = dummy_model_input(min(prefill, key=lambda s: s.num_tokens))
        buckets = self.patch_buckets
        inp.multi_modal = self.image_feeder.warmup_feed(buckets.sizes, buckets.patch_shape)
        self.executor.warmup(inp, capture=False)

    def _init_kv_cache(self, num_blocks: int) -> None:
        self.executor.init_kv_cache(num_blocks)
        self.strategy.init_kv_cache(num_blocks)

    def _size_kv_cache(self) -> int:
        cfg = self.config
        per_token = self.executor.kv_spec.bytes_per_token + self.strategy.kv_bytes_per_token
        if cfg.kv_cache_tokens is not None:
            tokens = cfg.kv_cache_tokens
        else:
            fraction = cfg.kv_cache_memory_fraction or self.executor.default_kv_memory_fraction
            tokens = min(
                self.executor.available_kv_bytes(fraction) // per_token,
                cfg.max_num_seqs * cfg.max_model_len,
            )
        num_blocks = tokens // cfg.block_size
        if num_blocks * cfg.block_size < cfg.max_model_len:
            raise ValueError(
                f"the KV cache holds {num_blocks * cfg.block_size} tokens, fewer than "
                f"max_model_len {cfg.max_model_len}: raise kv_cache_tokens (or the memory "
                "fraction) or lower max_model_len"
            )
        logger.info(
            "KV cache: %d blocks x %d tokens, %.1f MiB",
            num_blocks,
            cfg.block_size,
            num_blocks * cfg.block_size * per_token / 2**20,
        )
        return num_blocks + 1  # + the padding block

    def _eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        try:
            gen = GenerationConfig.from_pretrained(self.model_path)
            eos = gen.eos_token_id
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        except OSError:
            pass
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if not ids and getattr(self.text_config, "eos_token_id", None) is not None:
            eos = self.text_config.eos_token_id
            ids.update(eos if isinstance(eos, list) else [eos])
        return frozenset(ids)

    # -- requests -----------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("prompt must be token ids: this engine has no tokenizer")
        return PromptEncoder(self.tokenizer).encode(prompt)

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        multi_modal: MultiModalInput | None = None,
    ) -> None:
        """Queue a request. Raises ValueError for a bad prompt (empty, too long, duplicate id)
        or bad images. multi_modal: the prompt's processed images, with `prompt` the token
        ids `MultiModalProcessor.process` returned beside it (a multimodal model only)."""
        params = params or SamplingParams()
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in flight")
        text = prompt if isinstance(prompt, str) else None
        token_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if multi_modal is not None:
            self.check_multi_modal(multi_modal, prompt, token_ids)
        elif self.image_feeder is not None and self.hf_config.image_token_id in token_ids:
            raise ValueError(
                f"prompt: contains the image token (id {self.hf_config.image_token_id}) but "
                "no images came with it; pass the images as multi_modal_data"
            )
        self.check_prompt(token_ids)
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seq = Sequence(request_id, token_ids, params, seed, prompt=text, multi_modal=multi_modal)
        detok = IncrementalDetokenizer(self.tokenizer, token_ids, params.stop)
        self.requests[request_id] = RequestState(seq, detok)
        self.scheduler.add(seq)

    def check_multi_modal(
        self, multi_modal: MultiModalInput, prompt: str | list[int], token_ids: list[int]
    ) -> None:
        """ValueError naming `multi_modal_data` for images this engine cannot take."""
        if not isinstance(multi_modal, MultiModalInput):
            raise ValueError(
                f"multi_modal must be an engine.multimodal.MultiModalInput, got "
                f"{type(multi_modal).__name__}"
            )
        if self.image_feeder is None:
            raise ValueError(
                f"multi_modal_data: the {self.family.name} ({self.hf_config.model_type}) model "
                f"at {self.model_path} takes no images"
            )
        if isinstance(prompt, str):
            raise ValueError(
                "multi_modal_data: with images the prompt must be the token ids "
                "MultiModalProcessor.process returned, not text"
            )
        is_cross = self.family.cross_attention is not None
        if multi_modal.cross_attention != is_cross:
            raise ValueError(
                f"multi_modal_data: processed for another kind of model than the "
                f"{self.family.name} ({self.hf_config.model_type}) model at {self.model_path}: "
                "give the MultiModalInput this model's MultiModalProcessor returned"
            )
        max_images = self.image_feeder.max_images_per_prompt
        if max_images is not None and multi_modal.num_images > max_images:
            raise ValueError(
                f"multi_modal_data: {multi_modal.num_images} images, and {self.family.name} "
                f"({self.hf_config.model_type}) takes at most {max_images} per prompt"
            )
        image_token_id = self.hf_config.image_token_id
        multi_modal.check(token_ids, image_token_id, max(self.patch_buckets.counts))

    def check_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise EmptyPromptError()
        vocab = self.text_config.vocab_size
        bad = next((t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}), got {bad!r}")
        if len(token_ids) >= self.config.max_model_len:
            raise PromptTooLongError(len(token_ids), self.config.max_model_len - 1)

    def abort_request(self, request_id: str) -> bool:
        """Drop a request and free its blocks now. Returns False if it was not in flight."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return False
        self.scheduler.abort(state.seq)
        state.seq.finish_reason = "abort"
        self.strategy.release(state.seq)
        return True

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    # -- the step -----------------------------------------------------------------------
    def step(self, stream: bool = True) -> list[RequestOutput]:
        """Run one step. Returns cumulative outputs of every request that got a token
        (stream=True) or only of those that finished (stream=False). A server streams
        with `step_deltas` instead, which copies no token lists."""
        rows = self._step()
        return [make_output(state, finished) for state, finished in rows if stream or finished]

    def step_deltas(self) -> list[RequestDelta]:
        """Run one step. Returns a RequestDelta (the new tokens, text and logprobs) of
        every request that got a token."""
        return [make_delta(state, finished) for state, finished in self._step()]

    def _step(self) -> list[tuple[RequestState, bool]]:
        start = time.perf_counter()
        observer = self.step_observer
        k = self.strategy.num_lookahead_tokens(self.scheduler.running)
        sched = self.scheduler.schedule(num_lookahead_tokens=k)
        if sched is None:
            return []
        if observer is not None:  # before the rows advance past this step's tokens
            num_context_tokens = sum(item.seq.num_computed_tokens for item in sched.scheduled)
        inp = self.strategy.build_input(sched, k)
        self._account(inp.shape, inp.num_tokens)
        if self.image_feeder is not None:
            self._feed_images(sched, inp)
        exec_start, exec_cpu_start = time.perf_counter(), time.thread_time()
        out = self.executor.execute(inp)
        execute_s = time.perf_counter() - exec_start
        self.execute_thread_cpu_s += time.thread_time() - exec_cpu_start
        self._counters["steps"] += 1
        rows = self._process(sched, out)
        step_s = time.perf_counter() - start
        self.strategy.on_step_end(sched, step_s, execute_s)
        if observer is not None:
            observer(self._step_record(sched, inp.num_tokens, num_context_tokens, step_s))
        return rows

    def _step_record(
        self, sched: SchedulerOutput, num_tokens: int, num_context_tokens: int, step_s: float
    ) -> StepRecord:
        bm = self.block_manager
        events = bm.drain_events()
        snapshot = None
        if events.overflowed or self._is_snapshot_requested:
            self._is_snapshot_requested = False
            snapshot = bm.cached_block_hashes()  # right after the drain: they agree
        kind = sched.kind.value
        return StepRecord(
            kind, num_tokens, len(sched.scheduled), num_context_tokens, step_s, events, snapshot
        )

    def request_block_snapshot(self) -> None:
        """Have the next step's record carry the cached block hashes even without an
        overflow (an observer that lost records resyncs). Thread-safe: sets a flag."""
        self._is_snapshot_requested = True

    def _feed_images(self, sched: SchedulerOutput, inp: ModelInput) -> None:
        feeder = self.image_feeder
        misses = feeder.num_bucket_misses
        inp.multi_modal = feeder.feed(sched, inp, self.scheduler.running)
        if feeder.num_bucket_misses > misses and self.config.strict_shapes:
            raise BucketMissError(
                f"an image's patch bucket was not warmed (strict_shapes); warmed: "
                f"{sorted(feeder.warmed)}"
            )

    def _account(self, shape: StepShape, num_real_tokens: int) -> None:
        if shape not in self.warmed:
            self._counters["misses"] += 1
            if self.config.strict_shapes:
                raise BucketMissError(
                    f"step shape {shape} was not warmed (strict_shapes); warmed: "
                    f"{len(self.warmed)} shapes"
                )
        self._counters["real"] += num_real_tokens
        self._counters["padded"] += shape.num_tokens

    def _process(self, sched: SchedulerOutput, out: StepOutput) -> list[tuple[RequestState, bool]]:
        """Append each row's accepted tokens through the stop checks, then release the
        requests that finished. Returns (state, finished) of every row that got tokens."""
        done: list[tuple[RequestState, bool]] = []
        for row, item in enumerate(sched.scheduled):
            seq = item.seq
            if sched.kind is StepKind.PREFILL:
                self._counters["prefill"] += item.num_tokens
            if not item.is_sampled:  # a prompt chunk short of the end: no token yet
                seq.num_computed_tokens += item.num_tokens
                self.block_manager.publish_computed_blocks(seq)
                continue
            state = self.requests[seq.request_id]
            logprobs = out.logprobs[row] if out.logprobs is not None else None
            finished = self._append_tokens(state, out.token_ids[row], logprobs)
            # Every accepted token but the newest was fed this step (a proposal accepted
            # is the token fed at its position): KV holds everything before the newest.
            seq.num_computed_tokens = seq.num_tokens - 1
            self.block_manager.publish_computed_blocks(seq)
            if not finished:  # free lookahead slots the row did not use
                self.block_manager.trim(seq, seq.num_tokens)
            done.append((state, finished))
        self.strategy.on_step_output(sched, out)
        for state, finished in done:
            if finished:
                self._finish(state)
        return done

    def _append_tokens(self, state: RequestState, tokens: list[int], logprobs) -> bool:
        """Append tokens through the stop checks one at a time; the first that finishes the
        request ends it and the rest are dropped. Returns whether it finished."""
        seq = state.seq
        for i, token in enumerate(tokens):
            seq.token_ids.append(token)
            self._counters["generated"] += 1
            if state.logprobs is not None:
                chosen, top = logprobs[i]
                state.logprobs.append(TokenLogprob(token, chosen, dict(top[: seq.params.logprobs])))
            state.detokenizer.update(seq.token_ids)
            check_stop(state, token, self.stop_rule)
            if seq.finish_reason is not None:
                return True
        return False

    def _finish(self, state: RequestState) -> None:
        seq = state.seq
        state.detokenizer.flush(seq.token_ids)
        if state.detokenizer.stopped:  # the flushed tail completed a stop string
            seq.finish_reason, seq.stop_reason = "stop", state.detokenizer.matched_stop
        self.scheduler.finish(seq)
        del self.requests[seq.request_id]
        self.strategy.release(seq)

    def stats(self) -> EngineStats:
        bm, c = self.block_manager, self._counters
        runner = self.executor.runner_stats()
        return EngineStats(
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            num_free_blocks=bm.num_free_blocks,
            num_total_blocks=bm.num_usable_blocks,
            kv_usage=bm.usage,
            num_preemptions=self.scheduler.num_preemptions,
            num_prefix_hit_tokens=bm.num_prefix_hits_tokens,
            num_prefill_tokens=c["prefill"],
            num_generated_tokens=c["generated"],
            num_steps=c["steps"],
            num_bucket_misses=c["misses"] + self.strategy.num_bucket_misses + self._image_misses,
            num_real_tokens=c["real"],
            num_padded_tokens=c["padded"],
            num_graph_replays=runner["num_graph_replays"],
            num_eager_runs=runner["num_eager_runs"],
            num_warmed_shapes=len(self.warmed),
            warmup_s=self.warmup_s,
            **self.strategy.stats(),
            num_queued_prompt_tokens=self.scheduler.num_queued_prompt_tokens,
        )

    @property
    def _image_misses(self) -> int:
        return self.image_feeder.num_bucket_misses if self.image_feeder is not None else 0

    def shutdown(self) -> None:
        for request_id in list(self.requests):
            self.abort_request(request_id)
        self.strategy.shutdown()
        self.executor.shutdown()


def create_strategy(
    config: EngineConfig, shaper: StepShaper, executor, target_path: Path, tokenizer
) -> DecodeStrategy:
    """Plain decoding, or speculative decoding when config.speculative is set (imported
    only then: it may load a draft model)."""
    if config.speculative is None:
        return DecodeStrategy(shaper)
    from engine.speculative.strategy import SpeculativeDecoding

    return SpeculativeDecoding.create(config, shaper, executor, target_path, tokenizer)
