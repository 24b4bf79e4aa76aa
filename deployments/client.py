"""A small Python client over Serve deployment handles: no HTTP, same engine.

From a driver connected to the Ray cluster that runs the app (without `ray.init` Ray would
start a new, empty cluster of its own), or from another deployment::

    import asyncio

    import ray

    from deployments.client import LLMClient

    async def main():
        client = LLMClient()                   # the running gaudi-serve app, its default model
        print(await client.models())           # ['pycoder']
        print(await client.complete("def fib(n):", max_tokens=32, temperature=0))
        async for piece in client.stream("def fib(n):", max_tokens=32):
            print(piece, end="", flush=True)

    ray.init(address="auto")
    asyncio.run(main())

The application is found by its ingress: `gaudi-serve up` names it "gaudi-serve",
`serve run deployments.app:app` "default"; `LLMClient(app_name=...)` picks one when several
run. An application that does not exist raises AppNotFoundError listing those that do.

Keyword arguments are `engine.SamplingParams` fields (max_tokens, temperature, top_k,
top_p, repetition_penalty, seed, stop, stop_token_ids, ignore_eos, logprobs). `chunks()`
yields the raw `GenerationChunk`s (new text, tokens with logprobs, finish reason). Bad
input raises `InvalidRequestError` (a ValueError naming the input).

Under the hood: `serve.status()` lists the applications, `serve.get_app_handle(app)`
reaches the ingress (to list the models) and `serve.get_deployment_handle(model, app)` the
model's LLMServer, whose `generate` streams through `handle.options(stream=True)`. As the
ingress does, the client sends prompts as token ids, tokenized here with the model's own
tokenizer (loaded from its folder on first use; where that folder is not on this machine,
prompts go as text), and reports each request's first token to the routers of this
process (deployments.prompt_ids, autoscale.feedback).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayTaskError

from autoscale.feedback import feedback_for
from deployments.config import APP_NAME
from deployments.generation import GenerationChunk, InvalidRequestError, ModelInfo
from deployments.prompt_ids import PromptIds
from deployments.protocol import ApiError

__all__ = ["APP_NAMES", "AppNotFoundError", "LLMClient", "find_app"]

# What the commands name the application: `gaudi-serve up`, `serve run deployments.app:app`.
APP_NAMES = {"gaudi-serve up": APP_NAME, "serve run": "default"}
INGRESS_DEPLOYMENT = "Ingress"  # the deployment name of deployments.ingress.Ingress


class AppNotFoundError(LookupError):
    """No (single) gaudi-serve application by that name runs in the connected cluster."""


class LLMClient:
    """Handle-based access to a running gaudi-serve application.

    app_name: the Serve application; None finds the one gaudi-serve application running
        (see `find_app`). model: the model to use when a call names none; None means the
        application's default (its first model).
    """

    def __init__(self, app_name: str | None = None, model: str | None = None):
        self.app_name = find_app(app_name, _running_apps())
        self._ingress = serve.get_app_handle(self.app_name)
        self._default_model = model
        self._infos: dict[str, ModelInfo] = {}
        self._prompt_ids = PromptIds()

    async def models(self) -> list[str]:
        """The served model names; the first is the default."""
        return await self._ingress.model_names.remote()

    async def _server(self, model: str | None):
        name = model or self._default_model or (await self.models())[0]
        return serve.get_deployment_handle(name, self.app_name)

    async def _prompt_kwargs(self, server, prompt, messages) -> dict[str, Any]:
        name = server.deployment_name
        if name not in self._infos:
            self._infos[name] = await server.model_info.remote()
        try:
            return await self._prompt_ids.generate_kwargs(
                self._infos[name], prompt, messages=messages
            )
        except ApiError as error:
            raise InvalidRequestError(error.message, error.param) from None

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
        from engine import SamplingParams

        params = SamplingParams(**sampling)
        server = await self._server(model)
        prompt_kwargs = await self._prompt_kwargs(server, prompt, messages)
        request_id = f"client-{uuid.uuid4().hex}"
        sent_s = time.monotonic()
        stream = server.options(stream=True).generate.remote(
            params=params, request_id=request_id, **prompt_kwargs
        )
        is_first = True
        try:
            async for chunk in stream:
                if is_first:  # the routers count it as decoding from now on
                    is_first = False
                    feedback = feedback_for(server.deployment_name)
                    feedback.on_first_token(request_id, time.monotonic() - sent_s)
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


def find_app(app_name: str | None, running: dict[str, list[str]]) -> str:
    """The application to use, given `running` (application name -> its deployment names).

    A named application must be running. With no name, the one application whose ingress
    is gaudi-serve's, whatever it is called ("gaudi-serve" under `gaudi-serve up`,
    "default" under `serve run`). Raises AppNotFoundError listing the running applications.
    """
    listing = ", ".join(f"{name!r}" for name in running) or "none"
    if app_name is not None:
        if app_name in running:
            return app_name
        raise AppNotFoundError(
            f"application {app_name!r} is not running in this Ray cluster; running: {listing}"
        )
    ours = [name for name, deployments in running.items() if INGRESS_DEPLOYMENT in deployments]
    if len(ours) == 1:
        return ours[0]
    if not ours:
        usual = ", ".join(f"{name!r} ({command})" for command, name in APP_NAMES.items())
        raise AppNotFoundError(
            f"no gaudi-serve application is running in this Ray cluster (usually {usual}); "
            f"running applications: {listing}. Is this driver connected to the right cluster "
            "(ray.init(address='auto'))?"
        )
    names = ", ".join(repr(name) for name in ours)
    raise AppNotFoundError(f"several gaudi-serve applications are running ({names}): pass app_name")


def _running_apps() -> dict[str, list[str]]:
    """Application name -> deployment names, of the connected cluster's Serve."""
    if not ray.is_initialized():
        # serve.status() would start a new local cluster, which runs no application.
        raise RuntimeError(
            "LLMClient needs a connection to the Ray cluster that runs the application: "
            "call ray.init(address='auto') first (or set RAY_ADDRESS)"
        )
    status = serve.status()
    return {name: list(app.deployments) for name, app in status.applications.items()}
