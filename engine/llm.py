"""The offline API: `LLM(...).generate(prompts, params)`."""

from __future__ import annotations

import itertools
from typing import Any

from tqdm.auto import tqdm

from engine.config import EngineConfig
from engine.executor import ExecutorFactory
from engine.llm_engine import Engine
from engine.multimodal import MultiModalInput, MultiModalProcessor
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

# text, token ids, or {"prompt": text, "multi_modal_data": {"image": PIL image or list}}
Prompt = str | list[int] | dict[str, Any]
PROMPT_KEYS = ("prompt", "multi_modal_data")
MODALITIES = ("image",)


class LLM:
    """Generate for a batch of prompts with continuous batching, no server.

    >>> llm = LLM()  # the bundled default code model
    >>> out = llm.generate(["def fib(n):"], SamplingParams(max_tokens=32, temperature=0))
    >>> out[0].text  # doctest: +SKIP

    A multimodal model (Llava-NeXT) takes images beside a prompt holding the model's image
    placeholder once per image::

        llm.generate([{"prompt": "USER: <image>\nWhat is this?", "multi_modal_data":
                       {"image": pil_image}}], params)

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
        self._processor: MultiModalProcessor | None = None

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
        if isinstance(prompts, str | dict) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(
                f"params has {len(params_list)} entries but there are {len(prompts)} prompts"
            )
        ids = []
        try:
            for prompt, p in zip(prompts, params_list, strict=True):
                request_prompt, multi_modal = self._prepare(prompt)
                ids.append(f"offline-{next(self._ids)}")
                self.engine.add_request(
                    ids[-1], request_prompt, p or SamplingParams(), multi_modal=multi_modal
                )
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

    def _prepare(self, prompt: Prompt) -> tuple[str | list[int], MultiModalInput | None]:
        """A prompt as the engine takes it: a dict's images processed by the model's own
        processor. Raises ValueError naming the field for a bad dict."""
        if not isinstance(prompt, dict):
            return prompt, None
        unknown = sorted(set(prompt) - set(PROMPT_KEYS))
        if unknown or not isinstance(prompt.get("prompt"), str):
            raise ValueError(
                f"a prompt dict takes the keys {list(PROMPT_KEYS)} with 'prompt' a string; "
                f"got keys {sorted(prompt)}"
            )
        data = prompt.get("multi_modal_data") or {}
        if not isinstance(data, dict) or set(data) - set(MODALITIES):
            raise ValueError(
                f"multi_modal_data must be a dict with the keys {list(MODALITIES)}, got {data!r}"
            )
        if "image" not in data:
            return prompt["prompt"], None
        processor = self._multi_modal_processor()
        token_ids, multi_modal = processor.process(prompt["prompt"], data["image"])
        return token_ids, multi_modal

    def _multi_modal_processor(self) -> MultiModalProcessor:
        if self._processor is None:
            engine = self.engine
            self._processor = MultiModalProcessor.load(engine.model_path)
            if self._processor is None:
                raise ValueError(
                    f"multi_modal_data: the {engine.family.name} "
                    f"({engine.hf_config.model_type}) model at {engine.model_path} takes no "
                    "images"
                )
        return self._processor

    def shutdown(self) -> None:
        self.engine.shutdown()
