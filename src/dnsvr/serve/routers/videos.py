"""``/api/videos``: what the index holds (ids, frames, duration, source)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from dnsvr.serve.deps import get_state, require_read
from dnsvr.serve.errors import ApiError
from dnsvr.serve.models import VideoList, VideoOut
from dnsvr.serve.state import ServiceState

router = APIRouter(prefix="/api/videos", tags=["videos"], dependencies=[Depends(require_read)])


def _video(state: ServiceState, video_id: str) -> dict[str, Any]:
    from dnsvr.index.records import UnknownVideoError

    try:
        e = state.index.entry(video_id)
    except UnknownVideoError:
        raise ApiError(404, f"unknown video id {video_id!r}") from None
    return {"video_id": e.video_id, "frames": e.n_frames, "duration": e.duration, "source": e.source,
            "added": e.added, "width": e.meta.get("width"), "height": e.meta.get("height"), "ref": f"video:{video_id}"}


@router.get("", response_model=VideoList, summary="List indexed videos")
def list_videos(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                contains: str | None = Query(None, max_length=200, description="Only ids containing this text."),
                state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    ids = state.index.ids()
    if contains:
        ids = [v for v in ids if contains in v]
    page = ids[offset:offset + limit]
    return {"total": len(ids), "offset": offset, "videos": [_video(state, v) for v in page]}


@router.get("/{video_id:path}", response_model=VideoOut, summary="One indexed video")
def get_video(video_id: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    return _video(state, video_id)
