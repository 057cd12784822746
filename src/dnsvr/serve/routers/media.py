"""``/api/media``: pictures and bytes of the videos the service may show (see :mod:`dnsvr.serve.media`)."""

from __future__ import annotations

import mimetypes
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from dnsvr.serve.deps import get_state, require_read
from dnsvr.serve.errors import ApiError
from dnsvr.serve.media import contact_sheet_jpeg, frame_jpeg
from dnsvr.serve.models import MediaInfo
from dnsvr.serve.state import ServiceState

router = APIRouter(prefix="/api/media", tags=["media"], dependencies=[Depends(require_read)])

REF = Query(..., max_length=4200, description="video:<id>, upload:<id> or path:<path under a media root>")
_CACHE = {"Cache-Control": "private, max-age=3600"}


@router.get("/info", response_model=MediaInfo, summary="Duration, size and codec of a media file")
async def media_info(ref: str = REF, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    from dnsvr.video import VideoError, probe

    path = state.resolver.resolve(ref)
    try:
        info = await run_in_threadpool(probe, path, False)
    except VideoError as exc:
        raise ApiError(415, f"not a usable video: {exc.reason}") from None
    return {"ref": ref, "duration": info.duration, "width": info.display_width or info.width,
            "height": info.display_height or info.height, "fps": info.fps, "codec": info.codec,
            "bytes": path.stat().st_size}


@router.get("/frame", summary="The frame at t seconds, as JPEG (a thumbnail with a small w)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def media_frame(ref: str = REF, t: float = Query(0.0, ge=0, le=1e7), w: int = Query(320, ge=16, le=1280),
                      state: ServiceState = Depends(get_state)) -> Response:
    path = state.resolver.resolve(ref)
    data = await run_in_threadpool(frame_jpeg, path, t, w)
    return Response(data, media_type="image/jpeg", headers=_CACHE)


@router.get("/sheet", summary="A contact sheet: n frames evenly over [start, end] seconds, as JPEG",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def media_sheet(ref: str = REF, start: float = Query(..., ge=0, le=1e7), end: float = Query(..., ge=0, le=1e7),
                      n: int = Query(6, ge=1, le=24), w: int = Query(160, ge=16, le=640),
                      state: ServiceState = Depends(get_state)) -> Response:
    if end < start:
        raise ApiError(400, f"end ({end}) is before start ({start})")
    path = state.resolver.resolve(ref)
    data = await run_in_threadpool(contact_sheet_jpeg, path, start, end, n, w)
    return Response(data, media_type="image/jpeg", headers=_CACHE)


@router.get("/file", summary="The video bytes (HTTP range requests for playback)", response_class=FileResponse)
async def media_file(ref: str = REF, state: ServiceState = Depends(get_state)) -> FileResponse:
    path = state.resolver.resolve(ref)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not media_type.startswith("video/"):
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=_CACHE, content_disposition_type="inline")
