"""OpenAI-shaped errors: every failure the server answers is `{"error": {"message", "type", "param", "code"}}` with
the right status, so SDKs raise their own typed errors carrying our message."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error",
                   529: "overloaded_error"}


def anthropic_error_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def dialect_error(path: str, status: int, message: str, type_: str = "invalid_request_error",
                  code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The error body in the shape of the dialect the path belongs to: Ollama's `{"error": "..."}` under /api/,
    Anthropic's `{"type": "error", "error": {type, message}}` under /v1/messages, else OpenAI's."""
    if path.startswith("/api/"):
        return {"error": message}
    if path.startswith("/v1/messages"):
        return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
    return error_body(message, type_, code, param)


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


def error_response(request: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(dialect_error(request.url.path, err.status, err.message, err.type, err.code, err.param),
                        status_code=err.status, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape, unknown routes and methods (404/405) included."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        where = f"{request.method} {request.url.path}"
        message = {404: f"{where}: no such route", 405: f"{where}: method not allowed"}.get(exc.status_code,
                                                                                           str(exc.detail))
        return JSONResponse(dialect_error(request.url.path, exc.status_code, message, "invalid_request_error", code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, api_error(exc))
