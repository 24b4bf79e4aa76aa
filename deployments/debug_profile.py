"""`/debug/profile`: profile a live replica's next engine steps on every TP rank.

    GET|POST /debug/profile?model=NAME&steps=N[&timeout_s=S][&modules=false]

Off unless the model's config sets `serve.debug_profile: true` (404 naming the option
otherwise): a capture slows the replica while it runs. The ingress asks one replica of the
model (`LLMServer.profile`, which runs `profile_replica`); its executor has every rank
profile the replica's next N engine steps (engine.profiling.session) while it keeps
serving. Steps only run while the engine has requests: the replica waits for them up to
timeout_s and then answers with what it got, saying so. The answer: each rank's trace and
report paths (on the replica's node) and its report, the JSON `gaudi-serve profile`
writes. One capture at a time per replica (409 while one runs); the query is checked here
(400 naming the field and its range).
"""

from __future__ import annotations

import asyncio
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from deployments.cold_start import until_replica
from deployments.handles import ModelTable, to_api_error
from deployments.protocol import ApiError, openai_error_body
from engine import ProfileBusyError

if TYPE_CHECKING:
    from deployments.config import ModelConfig

OPTION = "serve.debug_profile"
MAX_STEPS = 1000
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 600.0
POLL_INTERVAL_S = 0.05  # how often a replica looks at its executor's step count
PROFILES_DIR = "gaudi-serve-profiles"  # under the replica node's temporary directory
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class ProfilingDisabledError(Exception):
    """The model's config does not enable /debug/profile."""


@dataclass(frozen=True)
class ProfileQuery:
    """A /debug/profile request, checked."""

    model: str | None
    num_steps: int
    timeout_s: float
    modules: bool


def parse_query(params: Mapping[str, str]) -> ProfileQuery:
    """The query of a /debug/profile request; ApiError 400 naming the bad field and the
    allowed values."""
    steps = params.get("steps")
    if steps is None:
        raise ApiError(400, f"steps is required: an integer in 1..{MAX_STEPS}", "steps")
    if not steps.strip().isdigit() or not 1 <= int(steps) <= MAX_STEPS:
        raise ApiError(400, f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}", "steps")
    timeout = params.get("timeout_s", str(DEFAULT_TIMEOUT_S))
    try:
        timeout_s = float(timeout)
    except ValueError:
        timeout_s = -1.0
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        message = (
            f"timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout!r}"
        )
        raise ApiError(400, message, "timeout_s")
    modules = params.get("modules", "true")
    if modules.lower() not in _BOOLEANS:
        message = f"modules must be one of {sorted(_BOOLEANS)}, got {modules!r}"
        raise ApiError(400, message, "modules")
    return ProfileQuery(params.get("model"), int(steps), timeout_s, _BOOLEANS[modules.lower()])


# -- the ingress side ---------------------------------------------------------------------
async def handle_profile_request(
    request: Request, models: ModelTable, enabled: Mapping[str, bool]
) -> Response:
    """Answer one /debug/profile request (see the module docstring): `enabled` maps each
    model to its serve.debug_profile."""
    try:
        query = parse_query(request.query_params)
        model = models.resolve(query.model)
        if not enabled.get(model, False):
            raise ApiError(404, _disabled_message(model), "model", code="profiling_disabled")
        handle = models.handles[model]
        response = handle.profile.remote(query.num_steps, query.timeout_s, query.modules)
        try:
            body = await until_replica(
                response, handle.deployment_name, models.cold_start_timeout_s.get(model)
            )
        except ApiError:
            response.cancel()
            raise
        except Exception as exc:
            raise _profile_error(exc, model) from None
    except ApiError as error:
        return JSONResponse(openai_error_body(error), error.status, headers=error.headers)
    return JSONResponse(body)


def _disabled_message(model: str) -> str:
    return (
        f"profiling is off for model {model!r}: set {OPTION}: true for it in the serving "
        "config to enable /debug/profile (a capture slows the replica while it runs)"
    )


def _profile_error(exc: Exception, model: str) -> ApiError:
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, ProfileBusyError):
        message = f"a replica of model {model!r} is already profiling: {cause}; retry later"
        return ApiError(409, message, code="profile_running")
    if isinstance(cause, ProfilingDisabledError):
        return ApiError(404, str(cause), "model", code="profiling_disabled")
    try:
        return to_api_error(exc)
    except Exception:
        return ApiError(500, f"profiling failed: {type(cause).__name__}: {cause}")


# -- the replica side ---------------------------------------------------------------------
async def profile_replica(
    model: ModelConfig,
    executor: Any,
    num_steps: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    modules: bool = True,
    *,
    replica_id: str,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Have every rank of `executor` (the replica's engine's) profile its next
    `num_steps` steps, waiting for them at most `timeout_s`; the answer of
    /debug/profile. Raises ProfilingDisabledError unless the model's serve.debug_profile,
    ProfileBusyError while a capture runs, ValueError for num_steps < 1."""
    if not model.serve.debug_profile:
        raise ProfilingDisabledError(_disabled_message(model.name))
    out = Path(out_dir) if out_dir is not None else default_out_dir(model.name)
    await asyncio.to_thread(executor.start_profile, str(out), num_steps, modules)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while executor.num_profiled_steps < num_steps and loop.time() < deadline:
            await asyncio.sleep(POLL_INTERVAL_S)
    finally:
        ranks = await asyncio.to_thread(executor.stop_profile)
    num_captured = min(rank.num_steps for rank in ranks)
    return {
        "model": model.name,
        "replica": replica_id,
        "node": socket.gethostname(),
        "out_dir": str(out),
        "num_steps_requested": num_steps,
        "num_steps": num_captured,
        "is_complete": num_captured == num_steps,
        "message": _summary(num_captured, num_steps, len(ranks), timeout_s),
        "ranks": [
            {
                "tp_rank": rank.tp_rank,
                "num_steps": rank.num_steps,
                "trace": rank.trace_path,
                "report_file": rank.report_path,
                "report": rank.report,
            }
            for rank in ranks
        ],
    }


def _summary(num_captured: int, num_steps: int, num_ranks: int, timeout_s: float) -> str:
    if num_captured == num_steps:
        return f"captured {num_steps} engine steps on {num_ranks} TP rank(s)"
    return (
        f"captured {num_captured} of {num_steps} engine steps within timeout_s "
        f"{timeout_s:g}: the engine steps only while it has requests (profile under "
        "traffic, or give a longer timeout_s)"
    )


def default_out_dir(model_name: str) -> Path:
    """A fresh folder for one capture: <tmp>/gaudi-serve-profiles/<model>-<time>-<id>."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / PROFILES_DIR / f"{slug}-{stamp}-{uuid.uuid4().hex[:6]}"


__all__ = [
    "MAX_STEPS",
    "OPTION",
    "ProfileQuery",
    "ProfilingDisabledError",
    "default_out_dir",
    "handle_profile_request",
    "parse_query",
    "profile_replica",
]
