"""Server-sent events framing shared by the OpenAI and TGI streaming routes."""

from __future__ import annotations

import json
from typing import Any

from deployments.protocol.shared import ResponseModel

# OpenAI streams end with this event; TGI streams just end.
SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: ResponseModel | dict[str, Any] | str) -> str:
    """One `data:` event: a response model or an error body (dict) as JSON, or raw text."""
    if isinstance(payload, ResponseModel):
        data = payload.to_json()
    elif isinstance(payload, dict):
        data = json.dumps(payload, separators=(",", ":"))
    else:
        data = payload
    return f"data: {data}\n\n"
