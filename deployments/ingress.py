"""The HTTP front door (FastAPI through `serve.ingress`): OpenAI and TGI routes, health,
and Prometheus metrics, in front of one `LLMServer` deployment per model.

    POST /v1/completions  /v1/chat/completions    GET /v1/models          (OpenAI)
    POST /generate  /generate_stream  /           GET /info               (TGI)
    GET  /health  /metrics        GET|POST /debug/profile (when serve.debug_profile is on)

Bodies are parsed here rather than by FastAPI so every error comes in its API's shape
(OpenAI: {"error": {...}}, TGI: {"error", "error_type"}) with a 4xx for bad input:
malformed JSON, unknown or bad fields, an unknown model (404 listing the served ones),
empty or too-long prompts. Overload is a 429/503 with Retry-After; a dead engine a 503.
The ingress loads no model weights. It loads each model's tokenizer, on first use, and
sends prompts as token ids, chat template and truncation applied (deployments.prompt_ids),
so a router sees the tokens a replica will prefill; where the tokenizer's folder is not on
this node, prompts go as text and the replicas tokenize them. Replicas count the tokens.
Images (a chat's image_url parts, TGI's `![](url)`) are fetched and decoded here
(deployments.images) and processed with the model's own processor, so the prompt's ids
and the image hashes reach the router; /v1/models (`input_modalities`) and /info
(`model_pipeline_tag`) say which models take them.
"""

# NOTE: no `from __future__ import annotations` here: FastAPI must see the route methods'
# real annotations (a string "Request" would make `request` a required query parameter).
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.responses import JSONResponse, Response, StreamingResponse

from autoscale.decision_board import read_decisions
from autoscale.feedback import router_stats
from deployments import openai_api, tgi_api
from deployments.generation import GenerationChunk
from deployments.handles import ModelTable, OnSampleDone, to_api_error
from deployments.metrics import CONTENT_TYPE, ServeMetrics
from deployments.protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    ModelCard,
    ModelList,
    api_error_from_validation,
    openai_error_body,
    tgi_error_body,
)
from deployments.replica_stats import ReplicaMonitor, ReplicaSnapshot, ReplicaState

logger = logging.getLogger(__name__)

app = FastAPI(title="gaudi-serve", description="OpenAI- and TGI-compatible LLM serving")

# A model that takes fewer requests at once streams each on its own (deployments.step_fanout).
MIN_ONGOING_FOR_STEP_STREAMS = 16

CLIENT_CLOSED = 499  # the status counted for a request its client abandoned (nginx's)
DECISIONS_DEADLINE_S = 0.5  # the longest /metrics waits for the autoscaler's decisions

# Handler of one API route: (models, resolved model name, parsed request, per-sample hook).
RouteHandler = Callable[[ModelTable, str, Any, OnSampleDone], Awaitable[Response]]


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _as_api_error(exc: Exception) -> ApiError:
    try:
        return to_api_error(exc)
    except Exception:
        logger.exception("request failed")
        return ApiError(500, f"internal error: {type(exc).__name__}")


def _step_stream_models(
    servers: dict[str, DeploymentHandle], max_ongoing_requests: dict[str, int] | None
) -> list[str]:
    """Models whose chunks travel on step streams: those that take at least
    MIN_ONGOING_FOR_STEP_STREAMS requests at once (a step stream holds one of the slots)."""
    limits = max_ongoing_requests or {}
    return [
        m
        for m in servers
        if limits.get(m, MIN_ONGOING_FOR_STEP_STREAMS) >= MIN_ONGOING_FOR_STEP_STREAMS
    ]


def _error_response(error: ApiError, is_tgi: bool) -> Response:
    body = tgi_error_body(error) if is_tgi else openai_error_body(error)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


# NOTE: the class comes last: `serve.ingress` pickles the routes when the class is
# decorated, and they keep only the module globals defined by then.
@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    """Routes each request to its model's deployment. `servers` maps model names to their
    LLMServer handles; `default_model` serves TGI requests (default: the first);
    `cold_start_timeout_s` bounds, per model, a request's wait while it has no replica;
    `debug_profile` says, per model, whether /debug/profile may profile it."""

    def __init__(
        self,
        servers: dict[str, DeploymentHandle],
        default_model: str | None = None,
        max_ongoing_requests: dict[str, int] | None = None,
        cold_start_timeout_s: dict[str, float] | None = None,
        debug_profile: dict[str, bool] | None = None,
    ):
        self.models = ModelTable(
            servers,
            default_model,
            _step_stream_models(servers, max_ongoing_requests),
            cold_start_timeout_s,
        )
        self.metrics = ServeMetrics()
        self.replicas = ReplicaMonitor(self.models.names)
        self._max_ongoing = max_ongoing_requests or {}
        self._num_in_flight = 0
        self._debug_profile = debug_profile or {}

    # -- OpenAI -------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._serve(
            request, "/v1/completions", CompletionRequest, openai_api.completions
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(
            request, "/v1/chat/completions", ChatCompletionRequest, openai_api.chat_completions
        )

    @app.get("/v1/models")
    async def list_models(self) -> Response:
        try:
            infos = await asyncio.gather(*(self.models.info(m) for m in self.models.names))
        except ApiError as error:
            return _error_response(error, is_tgi=False)
        cards = [
            ModelCard(
                id=i.name,
                max_model_len=i.max_model_len,
                vocab_size=i.vocab_size,
                input_modalities=i.input_modalities,
            )
            for i in infos
        ]
        return Response(ModelList(data=cards).to_json(), media_type="application/json")

    # -- TGI ----------------------------------------------------------------------------
    @app.post("/generate")
    async def tgi_generate(self, request: Request) -> Response:
        return await self._serve(request, "/generate", GenerateRequest, tgi_api.generate)

    @app.post("/generate_stream")
    async def tgi_generate_stream(self, request: Request) -> Response:
        return await self._serve(
            request, "/generate_stream", GenerateRequest, tgi_api.generate_stream
        )

    @app.post("/")
    async def tgi_compat(self, request: Request) -> Response:
        """TGI's `/`: the `stream` field picks /generate_stream or a one-element list."""

        async def handler(models, model, req: GenerateRequest, on_done) -> Response:
            if req.stream:
                return await tgi_api.generate_stream(models, model, req, on_done)
            return await tgi_api.generate(models, model, req, on_done, as_list=True)

        return await self._serve(request, "/", GenerateRequest, handler)

    @app.get("/info")
    async def tgi_info(self, model: str | None = None) -> Response:
        try:
            name = self.models.resolve(model or self.models.default_model)
            info = await self.models.info(name)
        except ApiError as error:
            return _error_response(error, is_tgi=True)
        body = tgi_api.info(info, self._max_ongoing.get(name, info.max_num_seqs))
        return Response(body.to_json(), media_type="application/json")

    # -- operations ---------------------------------------------------------------------
    @app.get("/health")
    async def health(self) -> Response:
        """200 while every model has a healthy replica, else 503, as TGI's and vLLM's
        /health (for load balancers and readiness probes). The body lists each model's
        replicas and their states (deployments.replica_stats): a replica still starting,
        waiting for room in the cluster or warming up, does not make its model unhealthy
        while another one serves it. Answers within milliseconds from the replicas' last
        stats, asked of the replicas directly, so a full request queue does not read as
        ill health."""
        replicas = await self._replica_snapshots()
        states: dict[str, dict[str, str]] = {model: {} for model in self.models.names}
        for replica in replicas:
            states[replica.model][replica.replica_id] = replica.state.value
        status = {
            model: ReplicaState.HEALTHY.value in by_replica.values()
            for model, by_replica in states.items()
        }
        code = 200 if all(status.values()) else 503
        body = {"healthy": code == 200, "models": status, "replicas": states}
        return JSONResponse(body, status_code=code)

    @app.get("/metrics")
    async def metrics(self) -> Response:
        replicas = await self._replica_snapshots()
        stats = {(r.model, r.replica_id): r.stats for r in replicas if r.stats}
        routers = {
            name: router_stats(handle.deployment_name)
            for name, handle in self.models.handles.items()
        }
        decisions = await self._autoscaling_decisions()
        return Response(self.metrics.render(stats, routers, decisions), media_type=CONTENT_TYPE)

    async def _autoscaling_decisions(self) -> dict[str, dict]:
        """model -> the SLO autoscaler's last decision (autoscale/decision_board.py), read
        off the event loop within DECISIONS_DEADLINE_S (late or failed: none)."""
        by_deployment = {h.deployment_name: m for m, h in self.models.handles.items()}
        app_name = serve.get_replica_context().app_name
        try:
            found = await asyncio.wait_for(
                asyncio.to_thread(read_decisions, app_name, list(by_deployment)),
                DECISIONS_DEADLINE_S,
            )
        except Exception as exc:  # metrics go out without them
            logger.warning("autoscaling decisions unavailable for /metrics: %r", exc)
            return {}
        return {by_deployment[name]: decision for name, decision in found.items()}

    async def _replica_snapshots(self) -> list[ReplicaSnapshot]:
        """Every replica of the served models, waiting on none that cannot answer now."""
        return await self.replicas.snapshot(serve.get_replica_context().app_name)

    @app.api_route("/debug/profile", methods=["GET", "POST"])
    async def debug_profile(self, request: Request) -> Response:
        """Profile the next engine steps of one replica of ?model=NAME on every TP rank
        (deployments.debug_profile); 404 unless the model's serve.debug_profile is on."""
        from deployments.debug_profile import handle_profile_request

        return await handle_profile_request(request, self.models, self._debug_profile)

    def num_in_flight(self) -> int:
        """Generation requests being served (for draining on shutdown)."""
        return self._num_in_flight

    def model_names(self) -> list[str]:
        return self.models.names

    # -- the request path ---------------------------------------------------------------
    async def _serve(
        self,
        request: Request,
        route: str,
        schema: type[BaseModel],
        handler: RouteHandler,
    ) -> Response:
        """Parse, route to the model, run `handler`, and account for the request."""
        is_tgi = schema is GenerateRequest
        model = None
        try:
            parsed = schema.model_validate(await _json_body(request))
            wanted = request.query_params.get("model") if is_tgi else parsed.model
            if is_tgi and wanted is None:
                wanted = self.models.default_model
            model = self.models.resolve(wanted)
            self._on_start(model)
            try:
                response = await handler(self.models, model, parsed, self._on_sample_done(model))
            except asyncio.CancelledError:  # the client went away before the answer began
                self._on_end(model, route, CLIENT_CLOSED)
                raise
        except ValidationError as exc:
            response = _error_response(api_error_from_validation(exc, schema), is_tgi)
        except ApiError as error:
            response = _error_response(error, is_tgi)
        except Exception as exc:
            response = _error_response(_as_api_error(exc), is_tgi)
        if model is None:
            return response
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._finish_after(response.body_iterator, model, route)
        else:
            self._on_end(model, route, response.status_code)
        return response

    def _on_start(self, model: str) -> None:
        self._num_in_flight += 1
        self.metrics.on_request_start(model)

    def _on_end(self, model: str, route: str, status: int) -> None:
        self._num_in_flight -= 1
        self.metrics.on_request_end(model, route, status)

    async def _finish_after(
        self, body: AsyncIterator[str], model: str, route: str
    ) -> AsyncIterator[str]:
        try:
            async for part in body:
                yield part
        finally:
            self._on_end(model, route, 200)

    def _on_sample_done(self, model: str) -> OnSampleDone:
        def on_done(ttft_s: float, decode_s: float, last: GenerationChunk) -> None:
            self.metrics.on_sample_done(
                model,
                ttft_s=ttft_s,
                decode_s=decode_s,
                num_prompt_tokens=last.num_prompt_tokens,
                num_generated_tokens=last.num_generated_tokens,
            )

        return on_done
