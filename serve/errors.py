"""OpenAI-shaped errors: every failure the server answers is `{"error": {"message", "type", "param", "code"}}` with
the right status, so SDKs raise their own typed errors carrying our message."""

from __future__ import annotations

import logging
from typing import Any

from toolace.errors import ContextLengthError, GenerationError, InputError, TemplateError, ToolaceError

log = logging.getLogger("toolace.server")


class ApiError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def gone_response() -> Any:
    """The answer to a request whose client went away (nginx's 499: nobody reads it, the log shows why)."""
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body("client disconnected", "invalid_request_error", None), status_code=499)


def api_error(exc: BaseException, started: bool = False) -> ApiError:
    """Map a library exception to an HTTP error by its class. `started`: tokens were already produced, so a
    decoding failure is the server's, not the request's."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (InputError, TemplateError)):
        return ApiError(400, str(exc), "invalid_request_error", "invalid_request")
    if isinstance(exc, ContextLengthError) and not started:
        return ApiError(400, str(exc), "invalid_request_error", "context_length_exceeded")
    if isinstance(exc, GenerationError) and not started:
        return ApiError(400, str(exc), "invalid_request_error", "invalid_request")
    if isinstance(exc, ToolaceError):
        return ApiError(500, str(exc), "server_error", "generation_failed")
    log.error("internal error", exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}", "server_error", "internal_error")
