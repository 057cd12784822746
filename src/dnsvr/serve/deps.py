"""FastAPI dependencies: the service state, and the access rules (read / write)."""

from __future__ import annotations

import hmac

from fastapi import Request

from dnsvr.serve.errors import ApiError
from dnsvr.serve.state import ServiceState


def get_state(request: Request) -> ServiceState:
    """The :class:`ServiceState` of the app serving ``request``."""
    return request.app.state.dnsvr


def _token_of(request: Request, allow_query: bool) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    header = request.headers.get("x-dnsvr-token")
    if header:
        return header.strip()
    if allow_query:  # <img>/<video> cannot send headers: GETs may carry ?token=
        return request.query_params.get("token")
    return None


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_read(request: Request) -> None:
    """Reads are open on loopback; beyond it every request needs the token."""
    cfg = get_state(request).config
    if cfg.public and not _matches(_token_of(request, allow_query=request.method == "GET"), cfg.token or ""):
        raise ApiError(401, "this service needs a token: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})


def require_write(request: Request) -> None:
    """Every write needs the token (header only: a link or a form on another site cannot write)."""
    cfg = get_state(request).config
    if cfg.token is None:
        raise ApiError(403, "writes are disabled: the service was started without a token (--token/--token-file)")
    if not _matches(_token_of(request, allow_query=False), cfg.token):
        raise ApiError(401, "this request writes and needs the token: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})
