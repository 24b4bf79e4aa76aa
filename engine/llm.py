"""The offline API: `LLM(...).generate(prompts, params)`."""

from __future__ import annotations

import itertools

from tqdm.auto import tqdm

from engine.config import EngineConfig
from engine.executor import ExecutorFactory
from engine.llm_engine import Engine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM:
    """Generate for a batch of prompts with continuous batching, no server.

    >>> llm = LLM()  # the bundled default code model
    >>> out = llm.generate(["def fib(n):"], SamplingParams(max_tokens=32, temperature=0))
    >>> out[0].text  # doctest: +SKIP

    Keyword arguments are EngineConfig fields (device, dtype, max_num_seqs, max_model_len,
    block_size, kv_cache_tokens, kv_cache_memory_fraction, tp_size, ...).
    `executor_factory` builds the executor (engine.executor.ExecutorFactory); None = the
    local one for tp_size 1, the registered tensor-parallel one otherwise.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        executor_factory: ExecutorFactory | None = None,
        **engine_args,
    ):
        self.engine = Engine(EngineConfig(model=model, **engine_args), executor_factory)
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the prompts' order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(
                f"params has {len(params_list)} entries but there are {len(prompts)} prompts"
            )
        ids = []
        try:
            for prompt, p in zip(prompts, params_list, strict=True):
                ids.append(f"offline-{next(self._ids)}")
                self.engine.add_request(ids[-1], prompt, p or SamplingParams())
            results: dict[str, RequestOutput] = {}
            with tqdm(total=len(ids), disable=not use_tqdm, desc="generate") as bar:
                while self.engine.has_unfinished:
                    for out in self.engine.step(stream=False):
                        results[out.request_id] = out
                        bar.update(1)
        except BaseException:
            for request_id in ids:
                self.engine.abort_request(request_id)
            raise
        return [results[i] for i in ids]

    def shutdown(self) -> None:
        self.engine.shutdown()
