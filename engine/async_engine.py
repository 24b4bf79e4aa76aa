"""The engine for servers: many concurrent `generate` streams over one step loop, and what
a server needs besides (warm-up, encoding, model info, stats, health).

Steps run in a worker thread so the event loop stays free. Scheduler state is only ever
touched on the event loop thread between steps: new requests and aborts are applied just
before the next step starts, so the loop never races a running step.

A stream yields `RequestDelta`s: what each step added, never a copy of what came before.
Deltas that queued up while the consumer was busy are merged into one, so a slow consumer
(a busy replica sending chunks) gets fewer, larger messages rather than a backlog.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import AsyncIterator

from engine.config import EngineConfig
from engine.engine_info import EngineInfo
from engine.errors import EngineDeadError
from engine.executor import ExecutorFactory
from engine.llm_engine import Engine
from engine.multimodal import MultiModalInput
from engine.outputs import RequestDelta
from engine.prompt_encoder import PromptEncoder
from engine.sampling_params import SamplingParams
from engine.stats import EngineStats
from engine.step_record import StepObserver
from engine.thread_cpu import current_thread_id, helper_threads_cpu_s, name_this_thread

logger = logging.getLogger(__name__)


class AsyncEngine:
    """Usage::

    engine = AsyncEngine(EngineConfig())   # loads the model
    engine.warm_up([0], SamplingParams(max_tokens=2))  # optional: before serving
    async for delta in engine.generate("def f(x):", SamplingParams(max_tokens=16), "req-1"):
        print(delta.text, end="")           # the text this step added

    `executor_factory` builds the executor (see engine.executor.ExecutorFactory); None = the
    local one for tp_size 1, the registered tensor-parallel one otherwise. `step_observer`
    gets a StepRecord after every step, `warm_up`'s included, on the stepping thread
    (engine.step_record: it must be cheap and thread-safe).
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        executor_factory: ExecutorFactory | None = None,
        step_observer: StepObserver | None = None,
    ):
        self.engine = Engine(
            config or EngineConfig(), executor_factory, step_observer=step_observer
        )
        self._info = self._describe()
        self._streams: dict[str, asyncio.Queue] = {}
        self._pending_aborts: set[str] = set()
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._stepping = False
        self._dead: BaseException | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="engine-step", initializer=self._on_step_thread_start
        )
        self._step_thread_id: int | None = None

    def _on_step_thread_start(self) -> None:
        name_this_thread()
        self._step_thread_id = current_thread_id()

    @property
    def config(self) -> EngineConfig:
        """The engine's config, resolved against the model (max_model_len is set)."""
        return self.engine.config

    def info(self) -> EngineInfo:
        """The loaded model, its limits and its tokenizer's special tokens."""
        return self._info

    def _describe(self) -> EngineInfo:
        engine, config, tokenizer = self.engine, self.engine.config, self.engine.tokenizer
        dtype = getattr(engine.executor.kv_spec, "dtype", None)
        return EngineInfo(
            model_path=engine.model_path,
            device=config.device,
            dtype=str(dtype).removeprefix("torch.") if dtype is not None else "auto",
            tp_size=config.tp_size,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            vocab_size=engine.text_config.vocab_size,
            bos_token_id=tokenizer.bos_token_id if tokenizer is not None else None,
            eos_token_ids=engine.stop_rule.eos_token_ids,
            special_token_ids=frozenset(tokenizer.all_special_ids if tokenizer else ()),
            chat_template=(tokenizer.chat_template or None) if tokenizer is not None else None,
        )

    # -- tokens -------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """The token ids the engine computes for `prompt` (special tokens such as BOS added
        as the tokenizer does). Raises ValueError when the engine has no tokenizer."""
        return PromptEncoder(self._tokenizer()).encode(prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt ids of a chat: the tokenizer's chat template with the generation
        prompt added. Raises ValueError when there is no tokenizer or no chat template.
        The ingress computes the same ids with its own engine.PromptEncoder."""
        return PromptEncoder(self._tokenizer()).encode_chat(messages)

    def decode(self, token_ids: list[int]) -> str:
        """The text of `token_ids` (a lone token holding part of a UTF-8 character decodes
        to U+FFFD). Raises ValueError when the engine has no tokenizer."""
        return self._tokenizer().decode(token_ids)

    def _tokenizer(self):
        if self.engine.tokenizer is None:
            raise ValueError("this engine has no tokenizer (skip_tokenizer_init is set)")
        return self.engine.tokenizer

    # -- readiness, stats and health ----------------------------------------------------
    def warm_up(self, prompt: str | list[int], params: SamplingParams) -> None:
        """Run one generation to completion on the calling thread, so that a server is
        ready (every lazy initialisation done) before its first request.
        NOTE: steps the engine synchronously; must run before the first `generate`."""
        if self._loop_task is not None:
            raise RuntimeError("warm_up must run before the first generate")
        self.engine.add_request("warmup", prompt, params)
        while self.engine.has_unfinished:
            self.engine.step_deltas()

    @property
    def is_healthy(self) -> bool:
        """False once the step loop failed or a rank of the executor died (even idle)."""
        return self._dead is None and self.engine.executor.is_healthy

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def forward_cpu_s(self) -> float:
        """CPU seconds of this process spent in the executor since start-up (the forward
        and the sampling; at tp_size 1 the whole forward): the stepping thread's time in
        `execute` plus all the time of the threads it started (torch's intra-op workers,
        spinning between parallel regions included). benchmarks/serve_load.py reports its
        share of the serving processes' CPU."""
        helpers_s = helper_threads_cpu_s(self._step_thread_id) if self._step_thread_id else 0.0
        return self.engine.execute_thread_cpu_s + helpers_s

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run_loop())

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str,
        multi_modal: MultiModalInput | None = None,
    ) -> AsyncIterator[RequestDelta]:
        """Yield deltas until the request finishes (the first carries the prompt's token
        ids; those queued meanwhile come merged). Raises ValueError for a bad prompt or
        images and EngineDeadError if the engine fails. Closing the iterator early (the
        client went away) aborts the request and frees its blocks.
        multi_modal: the prompt's processed images (engine.multimodal.MultiModalProcessor
        `process`, whose token ids are then `prompt`); a text-only model refuses them."""
        if self._dead is not None:
            raise EngineDeadError(f"engine is dead: {self._dead!r}")
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in flight")
        self._ensure_loop()
        self.engine.add_request(request_id, prompt, params, multi_modal)  # raises on bad input
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = queue
        self._wakeup.set()
        finished = False
        try:
            error: BaseException | None = None
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                while not queue.empty():
                    later = queue.get_nowait()
                    if isinstance(later, BaseException):
                        error = later  # raised once the deltas before it are out
                        break
                    item = item.merged(later)
                finished = item.finished
                yield item
                if error is not None and not finished:
                    raise error
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._abort_now_or_soon(request_id)

    async def abort(self, request_id: str) -> None:
        """Abort a request; its blocks are freed before the next step."""
        queue = self._streams.pop(request_id, None)
        self._abort_now_or_soon(request_id)
        if queue is not None:
            queue.put_nowait(asyncio.CancelledError(f"request {request_id} aborted"))

    def _abort_now_or_soon(self, request_id: str) -> None:
        if self._stepping:
            self._pending_aborts.add(request_id)
        else:
            self.engine.abort_request(request_id)

    async def _run_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for request_id in self._pending_aborts:
                self.engine.abort_request(request_id)
            self._pending_aborts.clear()
            if not self.engine.has_unfinished:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._stepping = True
            try:
                deltas = await loop.run_in_executor(self._thread, self.engine.step_deltas)
            except Exception as exc:  # an engine fault fails every request in flight
                logger.exception("engine step failed")
                self._fail_all(exc)
                return
            finally:
                self._stepping = False
            streams = self._streams
            for delta in deltas:
                queue = streams.get(delta.request_id)
                if queue is not None:
                    queue.put_nowait(delta)

    def _fail_all(self, exc: Exception) -> None:
        self._dead = exc
        error = EngineDeadError(f"engine step failed: {exc!r}")
        for queue in self._streams.values():
            queue.put_nowait(error)
        for request_id in list(self.engine.requests):
            self.engine.abort_request(request_id)

    async def check_health(self) -> None:
        """Raise EngineDeadError if the step loop has failed or a rank died."""
        if self._dead is not None:
            raise EngineDeadError(f"engine is dead: {self._dead!r}")
        if not self.engine.executor.is_healthy:
            raise EngineDeadError("the executor reports a dead rank")

    def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._thread.shutdown(wait=True)
        self.engine.shutdown()
