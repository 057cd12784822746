"""``/api/search``: rank the index for an indexed video, a file under the media roots, or an upload."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import ValidationError

from dnsvr.serve.deps import get_state, require_read
from dnsvr.serve.errors import ApiError
from dnsvr.serve.models import SearchParams, SearchRequest, SearchResponse
from dnsvr.serve.state import ServiceState

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/search", tags=["search"], dependencies=[Depends(require_read)])


def _check_video(state: ServiceState, path: Path) -> None:
    """415 when ``path`` is not a video, 413 when it is longer than the service searches."""
    from dnsvr.video import VideoError, probe

    try:
        info = probe(path, decode_first=True)
    except VideoError as exc:
        raise ApiError(415, f"not a usable video: {exc.reason}") from None  # the reason, not the server path
    limit = state.config.max_query_seconds
    if info.duration is not None and info.duration > limit:
        raise ApiError(413, f"the query video lasts {info.duration:.0f} s; this service searches at most {limit:g} s")


def _search_sync(state: ServiceState, query: str, params: SearchParams) -> dict[str, Any]:
    from dnsvr.index.query import ShardUnavailableError
    from dnsvr.index.records import IndexStoreError
    from dnsvr.index.video_index import VideoIndexError
    from dnsvr.search import Budget, results_document

    budget = Budget.parse(params.budget)
    extra: dict[str, Any] = {}
    if params.precision is not None:
        extra["precision"] = params.precision
    if params.match is not None:
        extra["match"] = params.match
    if len(state.index) == 0:
        raise ApiError(409, "the index is empty: add videos first")
    try:
        results = state.index.search([query], top_k=params.top_k, budget=budget, segments=params.segments,
                                     ann_candidates=params.ann, include_self=params.include_self, progress=False,
                                     allow_partial=state.config.allow_partial, **extra)
    except ShardUnavailableError as exc:  # a sharded index lost a shard (the service was not started with partial)
        raise ApiError(503, str(exc), headers={"Retry-After": "10"}) from None
    except VideoIndexError as exc:
        raise ApiError(422, str(exc)) from None
    except (IndexStoreError, ValueError) as exc:
        raise ApiError(422, str(exc)) from None
    return results_document(str(state.config.index_path), budget, params.top_k, results)


async def _run(state: ServiceState, query: str, ref: str, params: SearchParams) -> dict[str, Any]:
    start = time.perf_counter()
    ok = False
    try:
        doc = await state.run_bounded(lambda: _search_sync(state, query, params))
        ok = True
    finally:
        state.metrics.observe("search", time.perf_counter() - start, ok)
    doc["query_ref"] = ref
    return doc


@router.post("", response_model=SearchResponse, summary="Search by an indexed video id or a server-side path")
async def search(body: SearchRequest, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """The same parameters and the same JSON as ``dnsvr search --json`` (plus ``query_ref``)."""
    params = SearchParams(**body.model_dump(exclude={"video_id", "path"}))
    if body.video_id is not None:
        if body.video_id not in state.index:
            raise ApiError(404, f"unknown video id {body.video_id!r}")
        return await _run(state, body.video_id, f"video:{body.video_id}", params)
    path = state.resolver.under_roots(body.path or "")
    _check_video(state, path)
    return await _run(state, str(path), f"path:{state.resolver.relative(path)}", params)


@router.post("/upload", response_model=SearchResponse, summary="Search by an uploaded video file")
async def search_upload(
    file: UploadFile = File(..., description="The query video (size and type limited)."),
    top_k: int = Form(10), budget: str | None = Form(None), segments: bool = Form(True),
    include_self: bool = Form(False), precision: str | None = Form(None), ann: int | None = Form(None),
    match: str | None = Form(None),
    state: ServiceState = Depends(get_state),
) -> dict[str, Any]:
    """Upload a query video (multipart field ``file``) and search with it; the file is kept for review."""
    try:
        params = SearchParams(top_k=top_k, budget=budget or None, segments=segments, include_self=include_self,
                              precision=precision or None, ann=ann, match=match or None)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ApiError(422, f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}") from None
    cfg = state.config
    name = Path(file.filename or "upload").name
    suffix = Path(name).suffix.lower()
    if suffix not in cfg.upload_suffixes:
        raise ApiError(415, f"uploads must be video files ({', '.join(sorted(cfg.upload_suffixes))}); got {name!r}")
    incoming = state.uploads_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    size = 0
    with tempfile.NamedTemporaryFile(dir=incoming, suffix=suffix, delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > cfg.max_upload_bytes:
                    raise ApiError(413, f"upload larger than {cfg.max_upload_bytes} bytes")
                tmp.write(chunk)
        except BaseException:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise
    if size == 0:
        tmp_path.unlink(missing_ok=True)
        raise ApiError(415, "empty upload")
    try:
        _check_video(state, tmp_path)
    except ApiError:
        tmp_path.unlink(missing_ok=True)
        raise
    upload_id, path = state.keep_upload(tmp_path, name)
    return await _run(state, str(path), f"upload:{upload_id}", params)
