"""A small Python client over Serve deployment handles: no HTTP, same engine.

Inside the Ray cluster that runs the app (a driver connected with `ray.init(address=...)`,
or another deployment)::

    from deployments.client import LLMClient

    client = LLMClient()                       # app "gaudi-serve", its default model
    print(await client.models())               # ['pycoder']
    text = await client.complete("def fib(n):", max_tokens=32, temperature=0)
    async for piece in client.stream("def fib(n):", max_tokens=32):
        print(piece, end="", flush=True)

Keyword arguments are `engine.SamplingParams` fields (max_tokens, temperature, top_k,
top_p, repetition_penalty, seed, stop, stop_token_ids, ignore_eos, logprobs). `chunks()`
yields the raw `GenerationChunk`s (new text, tokens with logprobs, finish reason). Bad
input raises `InvalidRequestError` (a ValueError naming the input).

Under the hood: `serve.get_app_handle(app)` reaches the ingress (to list the models) and
`serve.get_deployment_handle(model, app)` the model's LLMServer, whose `generate` streams
through `handle.options(stream=True)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.exceptions import RayTaskError

from deployments.generation import GenerationChunk

DEFAULT_APP_NAME = "gaudi-serve"


class LLMClient:
    """Handle-based access to a running gaudi-serve application."""

    def __init__(self, app_name: str = DEFAULT_APP_NAME, model: str | None = None):
        self.app_name = app_name
        self._ingress = serve.get_app_handle(app_name)
        self._default_model = model

    async def models(self) -> list[str]:
        """The served model names; the first is the default."""
        return await self._ingress.model_names.remote()

    async def _server(self, model: str | None):
        name = model or self._default_model or (await self.models())[0]
        return serve.get_deployment_handle(name, self.app_name)

    async def chunks(
        self,
        prompt: str | list[int] | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        model: str | None = None,
        **sampling: Any,
    ) -> AsyncIterator[GenerationChunk]:
        """Stream GenerationChunks for a prompt (text or token ids) or chat `messages`.
        Breaking out of the loop cancels the request and frees its KV blocks."""
        from engine.sampling_params import SamplingParams

        params = SamplingParams(**sampling)
        handle = (await self._server(model)).options(stream=True)
        stream = handle.generate.remote(prompt, params, messages=messages)
        try:
            async for chunk in stream:
                yield chunk
        except RayTaskError as exc:
            raise (exc.cause if exc.cause is not None else exc) from None
        finally:
            # frees the request's blocks if the caller stopped early; a finished or
            # failed request re-raises its own outcome here, already seen above
            with contextlib.suppress(Exception):
                stream.cancel()

    async def stream(self, prompt=None, **kwargs: Any) -> AsyncIterator[str]:
        """Stream the generated text piece by piece (see `chunks` for the arguments)."""
        async for chunk in self.chunks(prompt, **kwargs):
            if chunk.text:
                yield chunk.text

    async def complete(self, prompt=None, **kwargs: Any) -> str:
        """The whole generated text (see `chunks` for the arguments)."""
        return "".join([piece async for piece in self.stream(prompt, **kwargs)])
