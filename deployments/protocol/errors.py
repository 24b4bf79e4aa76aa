"""API errors: one exception, rendered in OpenAI's or TGI's body shape.

Validation failures become readable lines that name the field by its path and say what was
expected, for example ``models.0.engine.block_size: Input should be 16, 32, 64 or 128 (got 7)``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_OVERLOAD_STATUSES = (429, 503)
_REPR = reprlib.Repr()  # short reprs of offending values
_REPR.maxstring = _REPR.maxother = 60


class ApiError(Exception):
    """An error to return to an HTTP client.

    `status` is the HTTP status, `param` the offending request field as a dotted path
    (None when no single field is to blame) and `type` the OpenAI error type (derived from
    the status when not given). `retry_after_s` asks overloaded clients to come back later.
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str | None = None,
        *,
        code: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or _default_openai_type(status)
        self.code = code
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers to send with the error (Retry-After for overload)."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, param={self.param!r})"


class OpenAIErrorDetail(BaseModel):
    """The inner object of an OpenAI error body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: OpenAIErrorDetail


class TgiErrorBody(BaseModel):
    """TGI's error body: ``{"error": message, "error_type": kind}``; error_type is one of
    "validation", "overloaded", "generation" (what the `text_generation` client maps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: str
    error_type: str


def openai_error_body(error: ApiError) -> dict[str, Any]:
    """The JSON body for `error` in OpenAI's shape (also used as an SSE error event)."""
    detail = OpenAIErrorDetail(
        message=error.message, type=error.type, param=error.param, code=error.code
    )
    return OpenAIErrorBody(error=detail).model_dump()


def tgi_error_body(error: ApiError) -> dict[str, Any]:
    """The JSON body for `error` in TGI's shape (also used as an SSE error event)."""
    return TgiErrorBody(error=error.message, error_type=tgi_error_type(error.status)).model_dump()


def tgi_error_type(status: int) -> str:
    """TGI's error_type for an HTTP status: overload, bad input, or a failed generation."""
    if status in _OVERLOAD_STATUSES:
        return "overloaded"
    if 400 <= status < 500:
        return "validation"
    return "generation"


def describe_validation_errors(
    errors: ValidationError | Sequence[Mapping[str, Any]],
    model: type[BaseModel] | None = None,
) -> list[str]:
    """One line per problem: ``"<dotted.path>: <what was expected> (got <value>)"``.

    `errors` is a pydantic ValidationError or its `.errors()` list (FastAPI's
    RequestValidationError.errors() works too: its leading "body" is dropped). With `model`,
    an unknown key also lists the keys allowed at that level.
    """
    items = errors.errors() if isinstance(errors, ValidationError) else errors
    return [_describe(item, model) for item in items]


def api_error_from_validation(
    errors: ValidationError | Sequence[Mapping[str, Any]],
    model: type[BaseModel] | None = None,
) -> ApiError:
    """A 400 ApiError listing every problem; `param` is the first offending field's path."""
    items = errors.errors() if isinstance(errors, ValidationError) else list(errors)
    lines = describe_validation_errors(items, model)
    param = loc_path(items[0]["loc"]) if items else None
    return ApiError(400, "; ".join(lines) or "invalid request", param=param or None)


def loc_path(loc: Sequence[str | int]) -> str:
    """A pydantic error location as a dotted path, without FastAPI's leading "body"."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(str(part) for part in parts)


def _describe(error: Mapping[str, Any], model: type[BaseModel] | None) -> str:
    loc = list(error["loc"])
    if loc and loc[0] == "body":
        loc = loc[1:]
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1]) if model is not None else None
        message = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    elif kind == "missing":
        message = "required key is missing"
    elif kind in ("value_error", "assertion_error") and "error" in error.get("ctx", {}):
        message = str(error["ctx"]["error"])
    else:
        message = f"{error['msg']} (got {_REPR.repr(error.get('input'))})"
    path = loc_path(loc)
    return f"{path}: {message}" if path else message


def _allowed_keys(model: type[BaseModel], parent: Sequence[str | int]) -> list[str] | None:
    current: type[BaseModel] | None = model
    for part in parent:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current is not None else None
        current = _find_model(field.annotation) if field is not None else None
    return list(current.model_fields) if current is not None else None


def _find_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `tuple[M, ...]` or `M | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _default_openai_type(status: int) -> str:
    if status in _OPENAI_TYPES:
        return _OPENAI_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "server_error"
