"""``dnsvr serve``: an HTTP API and a review page over one index.

``create_app(index_path, ...)`` builds the ASGI app (FastAPI): search by upload, indexed id or
server path with the options of ``dnsvr search``; add/remove jobs under the index's single-writer
rule; frames, contact sheets and video bytes (HTTP ranges) of the files the index holds or the
media roots contain; reviewer verdicts kept in ``review.sqlite`` and exported as a custom
benchmark; health and metrics. The page in ``static/`` is served by the same process.
"""

from __future__ import annotations

from dnsvr.serve.app import create_app
from dnsvr.serve.config import ServeConfig, is_loopback

__all__ = ["ServeConfig", "create_app", "is_loopback"]
