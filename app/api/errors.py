"""Every error a client can see, mapped to one status code and one JSON body shape:

    {"error": {"message": str, "type": str, "param": str | null, "code": int}}

except on Anthropic's routes (/v1/messages*), whose clients read Anthropic's shape:
`{"type": "error", "error": {"type", "message"}}` (error_content chooses, by path).

Domain errors come from the engine (app.engine.errors); HTTP-level ones are defined here.
No handler ever returns a stack trace; each error is logged once with its request id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.validation_messages import body_shape_message, unknown_fields_message
from app.chat.errors import (
    AnswerFormatConflict,
    BudgetUnsupported,
    ChatRequestError,
    ContinuationError,
    ToolChoiceError,
)
from app.engine.errors import (
    AdapterNotFound,
    EngineDead,
    EngineError,
    EngineStopped,
    InvalidRequest,
    QueueCapacityExceeded,
    QueueFull,
    RequestCancelled,
    StepFailed,
)
from app.engine.validation import (
    ContextOverflow,
    InvalidPrompt,
    InvalidSampling,
    TooManySequences,
    WrongModelTask,
)
from app.modeling.lora import AdapterError
from app.tokenizer import TokenizerError

log = logging.getLogger("app.api")


class ApiError(Exception):
    status = 500
    type = "internal_error"

    def __init__(self, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class BadRequest(ApiError):
    status, type = 400, "invalid_request_error"


class Unauthorized(ApiError):
    status, type = 401, "authentication_error"


class NotFound(ApiError):
    status, type = 404, "not_found_error"


class NotReady(ApiError):
    status, type = 503, "service_unavailable"


# engine error -> (status, type)
ENGINE_ERRORS: dict[type[EngineError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request_error"),
    AdapterNotFound: (404, "not_found_error"),
    QueueFull: (429, "rate_limit_error"),
    EngineStopped: (503, "service_unavailable"),
    EngineDead: (503, "engine_dead"),
    StepFailed: (500, "inference_error"),
    RequestCancelled: (499, "request_cancelled"),
}

# engine error -> the request field it is about. The engine names no fields (it does not
# know the API's); these are the names every endpoint gives them.
ENGINE_ERROR_FIELDS: dict[type[EngineError], str] = {
    WrongModelTask: "model",
    InvalidPrompt: "prompt",
    TooManySequences: "n",
    QueueCapacityExceeded: "prompt",
    AdapterNotFound: "model",
}


# The chat path's refusals (400), and the request field each is about.
CHAT_ERROR_FIELDS: dict[type[ChatRequestError], str] = {
    ToolChoiceError: "tool_choice",
    AnswerFormatConflict: "response_format",
    BudgetUnsupported: "thinking_budget",
    ContinuationError: "continue_final_message",
}


def engine_error_field(exc: EngineError) -> str | None:
    if isinstance(exc, InvalidSampling):
        return exc.setting  # sampling settings keep the names of the requests' fields
    if isinstance(exc, ContextOverflow):
        return "prompt" if exc.prompt_alone else "max_tokens"
    field = next((f for cls, f in ENGINE_ERROR_FIELDS.items() if isinstance(exc, cls)), None)
    return field or exc.param


def error_body(status: int, type_: str, message: str, param: str | None = None
               ) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


# Anthropic's error types by status (its SDK picks exception classes by status, its users
# read `error.type`); any other 5xx is an api_error.
ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
    415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
    499: "invalid_request_error", 503: "overloaded_error", 529: "overloaded_error"}
ANTHROPIC_PREFIX = "/v1/messages"


def anthropic_route(path: str) -> bool:
    """Whether `path` is one of Anthropic's Messages routes (their errors take its shape)."""
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path as the routes name it (without a proxy's --root-path prefix)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    return path[len(root):] if root and path.startswith(root) else path


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body (also its stream's `event: error` data)."""
    type_ = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else
                                "invalid_request_error")
    return {"type": "error", "error": {"type": type_, "message": message}}


def error_content(path: str, status: int, type_: str, message: str,
                  param: str | None = None) -> tuple[int, dict[str, Any]]:
    """(status, body) of an error on the route at `path`: the one place that chooses the
    shape. Anthropic answers a body that fails its schema with 400, not 422."""
    if anthropic_route(path):
        status = 400 if status == 422 else status
        return status, anthropic_error(status, message)
    return status, error_body(status, type_, message, param)


def status_of(exc: BaseException) -> tuple[int, str, str | None, dict[str, str]]:
    """(status, type, param, headers) for any exception a handler may raise."""
    if isinstance(exc, ApiError):
        return exc.status, exc.type, exc.param, exc.headers
    if isinstance(exc, EngineError):
        # By class or base class: the engine's errors have subclasses (engine.validation).
        status, type_ = next((v for cls, v in ENGINE_ERRORS.items() if isinstance(exc, cls)),
                             (500, "engine_error"))
        headers = {}
        if isinstance(exc, QueueFull):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return status, type_, engine_error_field(exc), headers
    if isinstance(exc, TokenizerError):
        return 400, "invalid_request_error", None, {}
    if isinstance(exc, AdapterError):  # only loading an adapter reads one
        return 400, "invalid_request_error", "lora_path", {}
    if isinstance(exc, ChatRequestError):
        field = next((f for cls, f in CHAT_ERROR_FIELDS.items() if isinstance(exc, cls)), None)
        return 400, "invalid_request_error", field, {}
    return 500, "internal_error", None, {}


def count_error(request: Request, type_: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(type=type_).inc()


def error_response(request: Request, exc: BaseException) -> JSONResponse:
    status, type_, param, headers = status_of(exc)
    count_error(request, type_)
    message = str(exc) if status < 500 or isinstance(exc, EngineError | ApiError) else (
        "internal server error")
    request_id = getattr(request.state, "request_id", None)
    level = logging.ERROR if status >= 500 else logging.INFO
    log.log(level, "request failed", extra={"request_id": request_id, "status": status,
                                            "error_type": type_, "error": message},
            exc_info=exc if status == 500 and not isinstance(exc, EngineError) else None)
    status, body = error_content(route_path(request.scope), status, type_, message, param)
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_param(errors: list[Any]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return str(first.get("msg", "invalid request")), param


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(EngineError)
    async def _engine(request: Request, exc: EngineError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(TokenizerError)
    async def _tokenizer(request: Request, exc: TokenizerError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(AdapterError)
    async def _adapter(request: Request, exc: AdapterError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(ChatRequestError)
    async def _chat(request: Request, exc: ChatRequestError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # A body that is not a JSON object, or a field the endpoint does not know, is a
        # malformed request (400, as for invalid JSON and as OpenAI answers unknown
        # fields); a JSON object whose known fields fail the schema stays 422.
        invalid = [e for e in errors if e.get("type") == "json_invalid"]
        if invalid:
            where = invalid[0].get("ctx", {}).get("error")
            return error_response(request, BadRequest(
                "request body is not valid JSON" + (f" ({where})" if where else "")))
        shape = body_shape_message(request, errors)
        if shape is not None:
            return error_response(request, BadRequest(shape))
        unknown = unknown_fields_message(request, errors)
        if unknown is not None:
            return error_response(request, BadRequest(unknown[0], param=unknown[1]))
        message, param = _validation_param(errors)
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: "
            # Our own validators' messages, without pydantic's "Value error, " in front.
            f"{str(e.get('msg')).removeprefix('Value error, ')}"
            for e in errors[:5])
        count_error(request, "invalid_request_error")
        status, body = error_content(route_path(request.scope), 422, "invalid_request_error",
                                     details or message, param)
        log.info("request failed", extra={"request_id": getattr(request.state, "request_id",
                                                                None),
                                          "status": status, "error": details})
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found_error", 405: "method_not_allowed",
                 413: "request_too_large", 415: "unsupported_media_type"}.get(
            exc.status_code, "invalid_request_error")
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        count_error(request, type_)
        status, body = error_content(route_path(request.scope), exc.status_code, type_, message)
        return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, exc)
