"""Pieces shared by the OpenAI and TGI models: config, stop lists, unsupported fields, and
the one place request fields become the engine's SamplingParams."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from deployments.protocol.errors import ApiError
from engine import SamplingParams

MAX_STOP_SEQUENCES = 16
MAX_SEED = 2**63 - 1  # SamplingParams takes seeds in [0, 2**63)

# Requests reject unknown fields, so a typo is a 400 rather than a silently ignored option.
REQUEST_CONFIG = ConfigDict(extra="forbid", frozen=True)


class ResponseModel(BaseModel):
    """Base of every response body and stream event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> str:
        """The JSON to send; unset optional fields are left out rather than sent as null."""
        return self.model_dump_json(exclude_none=True)


def check_stop(value: Any) -> Any:
    """Validate a stop field: None, one string, or a list of up to MAX_STOP_SEQUENCES
    non-empty strings. Returns the value unchanged (use `stop_list` to normalise)."""
    if value is None or (isinstance(value, str) and value):
        return value
    allowed = f"a non-empty string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings"
    if not isinstance(value, list):
        raise ValueError(f"stop must be {allowed}, got {value!r}")
    if len(value) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in value):
        raise ValueError(f"stop must be {allowed}, got {value!r}")
    return value


def stop_list(value: str | list[str] | None) -> list[str]:
    """A validated stop field as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def reject_unsupported(field: str, value: Any, neutral: tuple[Any, ...], hint: str = "") -> Any:
    """Accept `value` only if it is one of the `neutral` values (those that ask for nothing
    gaudi-serve lacks); otherwise raise naming the field and what is accepted."""
    if any(_same(value, ok) for ok in neutral):
        return value
    accepted = " or ".join(_json(ok) for ok in neutral)
    message = f"{field}={_json(value)} is not supported: omit it or send {accepted}"
    raise ValueError(message + (f" ({hint})" if hint else ""))


def build_sampling_params(**kwargs: Any) -> SamplingParams:
    """SamplingParams(**kwargs), with its ValueError turned into a 400 naming the field."""
    try:
        return SamplingParams(**kwargs)
    except ValueError as exc:
        message = str(exc)
        param = message.split(" ", 1)[0] if message else None
        raise ApiError(400, message, param=param) from exc


def _same(value: Any, ok: Any) -> bool:
    """Equality that keeps booleans apart from numbers (0 is not false) but lets 0 == 0.0."""
    if isinstance(value, bool) or isinstance(ok, bool):
        return isinstance(value, bool) and isinstance(ok, bool) and value == ok
    if isinstance(value, (int, float)) and isinstance(ok, (int, float)):
        return value == ok
    return type(value) is type(ok) and value == ok


def _json(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
