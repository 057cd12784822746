"""The ASGI app: :func:`create_app` wires the routers, the limits and the static review page."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dnsvr import __version__
from dnsvr.serve.config import ServeConfig
from dnsvr.serve.errors import ApiError, error_body, install_error_handlers
from dnsvr.serve.routers import jobs, media, search, system, verdicts, videos
from dnsvr.serve.state import ServiceState

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
#: Body limit of every request except uploads (JSON bodies are small).
MAX_JSON_BODY = 1 << 20
#: Room for the multipart framing and form fields around an uploaded file.
MULTIPART_OVERHEAD = 64 * 1024
UPLOAD_PATH = "/api/search/upload"
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                                 b"style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'"),
]


class _Guard:
    """Pure ASGI middleware: body size limits (before any parsing), security headers, request metrics."""

    def __init__(self, app: ASGIApp, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.upload_limit + MULTIPART_OVERHEAD if path == UPLOAD_PATH else MAX_JSON_BODY
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _send_json(send, 413, error_body(413, f"request body larger than {limit} bytes"))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    from starlette.exceptions import HTTPException

                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _SECURITY_HEADERS
            await send(message)

        start = time.perf_counter()
        status = {"code": 500}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send_with_headers(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            if path.startswith("/api/"):
                parts = path.split("/")
                name = "/".join(parts[:3])
                state = getattr(scope.get("app"), "state", None)
                svc = getattr(state, "dnsvr", None) if state is not None else None
                if svc is not None:
                    svc.metrics.observe(name, time.perf_counter() - start, status["code"] < 400)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                + _SECURITY_HEADERS})
    await send({"type": "http.response.body", "body": data})


def create_app(index_path: str | Path | None = None, config: ServeConfig | None = None, **options: Any) -> FastAPI:
    """The search service and review page over one index, as an ASGI app.

    Args:
        index_path: the index directory (or give ``config``).
        config: a full :class:`ServeConfig`; ``options`` are its fields otherwise
            (``media_roots``, ``token``, ``public``, ``max_upload_bytes``...).

    Returns:
        A FastAPI app; the index is opened read-only when the app starts (lifespan) and closed at
        shutdown. Run it with uvicorn (``dnsvr serve``) or test it with an ASGI client.

    Raises:
        ValueError: invalid options (e.g. ``public`` without a token, a media root that is not a folder).

    Example:
        >>> app = create_app("my.index", media_roots=["videos/"], token="s3cret-token")  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)             # doctest: +SKIP
    """
    if config is None:
        if index_path is None:
            raise ValueError("create_app needs index_path or config")
        config = ServeConfig(index_path=Path(index_path), **options)
    elif options or index_path is not None:
        raise ValueError("give either config or index_path with options, not both")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        app.state.dnsvr = ServiceState(config)
        logger.info("serving %s (%d videos)", config.index_path, len(app.state.dnsvr.index))
        try:
            yield
        finally:
            app.state.dnsvr.close()

    # no /docs or /redoc: their pages load scripts from a CDN; the description is /openapi.json
    app = FastAPI(title="dnsvr", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="DnS video copy search over one index: search, add/remove jobs, media for review, "
                              "reviewer verdicts exported as a custom benchmark.")
    install_error_handlers(app)
    for module in (system, search, videos, media, jobs, verdicts):
        app.include_router(module.router)

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def _unknown(rest: str) -> None:
        raise ApiError(404, f"no such endpoint: /api/{rest}")

    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="page")
    app.add_middleware(_Guard, upload_limit=config.max_upload_bytes)
    return app
