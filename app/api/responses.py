"""What each route documents in the OpenAPI schema: a real example of its 200 answer (and
of its stream, for the routes that stream), and only the error statuses it can return,
each with an example body. 401 is added by app.api.router to the protected routes, and
only when the server has API keys.
"""

from __future__ import annotations

from typing import Any

from app.api.schemas import ErrorResponse, HealthResponse


def _error(code: int, type_: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# status -> (description, example body)
_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("A malformed request (not a JSON object, invalid JSON, an unknown field) or a bad "
          "value (prompt + max_tokens beyond the context, a limit exceeded)",
          _error(400, "invalid_request_error",
                 "max_tokens is 100000, but this prompt of 6 tokens leaves room for at most "
                 "250 in the 256-token context of default-lm (server limit: "
                 "--max-tokens-limit 2048)", "max_tokens")),
    401: ("Missing or wrong API key (only when the server has API keys)",
          _error(401, "authentication_error",
                 "missing API key: send 'Authorization: Bearer <key>'")),
    404: ("Unknown model", _error(
        404, "not_found_error",
        "model 'gpt-9' does not exist (served: default-lm, fortune-classifier)", "model")),
    413: ("Request body over --max-body-bytes", _error(
        413, "request_too_large", "request body exceeds the limit of 1048576 bytes")),
    422: ("A known field with the wrong type or value (the field is in `param`)", _error(
        422, "invalid_request_error", "temperature: Input should be greater than or equal "
                                      "to 0", "temperature")),
    429: ("The model's queue is full; retry after `Retry-After` seconds", _error(
        429, "rate_limit_error", "server busy: 128 requests are already waiting")),
    500: ("The inference step for this request failed (the engine keeps serving)", _error(
        500, "inference_error", "inference step failed: RuntimeError: ...")),
    503: ("Loading, draining after SIGTERM, or the model's engine is dead", _error(
        503, "service_unavailable", "the server is not ready (starting)")),
}

# What each kind of route can return besides 200.
INFERENCE = (400, 404, 413, 422, 429, 500, 503)  # validated, queued and run by an engine
TOKENIZER = (400, 404, 413, 422, 503)  # a body and a model, but no engine step
MODEL_QUERY = (404, 503)  # GET with an optional model name


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _ERRORS[code][0],
                   "content": {"application/json": {"example": _ERRORS[code][1]}}}
            for code in codes}


# FastAPI's encoder drops nulls inside named `examples` (its exclude_none reaches into
# them, not into a lone `example`), and OpenAI's shapes need them (content null beside
# tool calls): they travel as this text, which app.api.docs turns back into null.
NULL = "\u0000null"


def _keep_nulls(value: Any) -> Any:
    if value is None:
        return NULL
    if isinstance(value, dict):
        return {k: _keep_nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keep_nulls(v) for v in value]
    return value


def _examples(first: Any, more: dict[str, dict[str, Any]] | None,
              summary: str) -> dict[str, Any]:
    """A media type's `example`, or with `more` (named OpenAPI Example Objects: summary
    and value) its `examples`, the first under "default"."""
    if not more:
        return {"example": first}
    return {"examples": _keep_nulls({"default": {"summary": summary, "value": first},
                                     **more})}


def documented(example: dict[str, Any], *codes: int, stream: str | None = None,
               more: dict[str, dict[str, Any]] | None = None,
               more_stream: dict[str, dict[str, Any]] | None = None
               ) -> dict[int | str, dict[str, Any]]:
    """responses= for a JSON route: its 200 example (plus an SSE example when it
    streams), named further examples of either (`more`, `more_stream`), and the error
    statuses `codes`."""
    content: dict[str, Any] = {"application/json": _examples(example, more, "An answer")}
    description = "Successful Response"
    if stream is not None:
        content["text/event-stream"] = _examples(stream, more_stream, "A streamed answer")
        description = ("JSON; with `\"stream\": true`, Server-Sent Events, one `data:` line "
                       "per event, ending with `data: [DONE]`")
    return {200: {"description": description, "content": content}, **errors(*codes)}


def probe(ok: dict[str, Any], not_ready: dict[str, Any] | None) -> dict[int | str, Any]:
    """responses= for a health probe: 200, and 503 with the same body shape when the
    probe can fail."""
    out: dict[int | str, Any] = {200: {"content": {"application/json": {"example": ok}}}}
    if not_ready is not None:
        out[503] = {"model": HealthResponse, "description": "Not started / not ready "
                                                            "(see `reason`)",
                    "content": {"application/json": {"example": not_ready}}}
    return out


UNAUTHORIZED = errors(401)
