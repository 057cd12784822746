"""Errors as JSON with a status code: ``{"error": {"status", "code", "message"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 415: "unsupported_media_type", 416: "range_not_satisfiable",
          422: "invalid", 500: "internal", 503: "busy", 504: "timeout"}


class ApiError(Exception):
    """An error the client should see: status code, short code, and a message naming what was wrong."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.headers = headers


def error_body(status: int, message: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "code": code or _CODES.get(status, "error"), "message": message, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, answers the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.message, exc.code), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()]
        first = details[0] if details else {"loc": [], "message": "invalid request"}
        message = f"{'.'.join(str(p) for p in first['loc'])}: {first['message']}"
        return JSONResponse(error_body(422, message, details=details), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, f"internal error ({type(exc).__name__})"), status_code=500)
