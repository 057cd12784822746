"""``/api/jobs``: add and remove videos in the background (one writer at a time; reads go on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends

from dnsvr.serve.deps import get_state, require_read, require_write
from dnsvr.serve.errors import ApiError
from dnsvr.serve.models import AddJobRequest, JobOut, RemoveJobRequest
from dnsvr.serve.state import ServiceState

router = APIRouter(prefix="/api/jobs", tags=["jobs"], dependencies=[Depends(require_read)])


@router.post("/add", response_model=JobOut, status_code=202, dependencies=[Depends(require_write)],
             summary="Add videos (files, folders, feature files under the media roots)")
def add_job(body: AddJobRequest, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """Folders are scanned here, and every video found must itself lie inside a media root (a
    symlink in a folder cannot pull in a file from elsewhere); list files are refused (they could
    name any path)."""
    from dnsvr.extract import resolve_inputs
    from dnsvr.index.video_index import FEATURE_SUFFIXES
    from dnsvr.video import VIDEO_EXTENSIONS

    resolver = state.resolver
    videos: list[Path] = []
    features: list[Path] = []
    for text in body.paths:
        path = resolver.under_roots(text, allow_dir=True)
        suffix = path.suffix.lower()
        if path.is_dir() or suffix in VIDEO_EXTENSIONS:
            videos.append(path)
        elif suffix in FEATURE_SUFFIXES:
            features.append(path)
        else:
            raise ApiError(415, f"{text!r}: add takes video files, folders of videos, or .h5 feature files")
    entries: list[tuple[str, Path]] = []
    refused: list[dict[str, str]] = []
    for vid, path in resolve_inputs(videos, failures=[]) if videos else []:
        if not resolver.confined(path):
            refused.append({"input": vid, "reason": "outside the media roots"})
        elif any(c in vid or c in str(path) for c in "\t\r\n") or vid != vid.strip() or vid.startswith("#"):
            refused.append({"input": vid, "reason": "unsupported characters in the id or path"})
        else:
            entries.append((vid, path.resolve()))
    if not entries and not features:
        raise ApiError(422, "nothing to add: no video found under the given paths"
                       + (f" ({len(refused)} refused)" if refused else ""))
    return state.jobs.submit_add(entries, features, refused=refused, on_duplicate=body.on_duplicate).to_dict()


@router.post("/remove", response_model=JobOut, status_code=202, dependencies=[Depends(require_write)],
             summary="Remove indexed videos")
def remove_job(body: RemoveJobRequest, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    if body.missing == "error":
        unknown = [v for v in body.video_ids if v not in state.index]
        if unknown:
            raise ApiError(404, f"{len(unknown)} unknown video id(s): {', '.join(map(repr, unknown[:10]))}")
    return state.jobs.submit_remove(body.video_ids, missing=body.missing).to_dict()


@router.get("", response_model=list[JobOut], summary="All jobs, oldest first")
def list_jobs(state: ServiceState = Depends(get_state)) -> list[dict[str, Any]]:
    return [j.to_dict() for j in state.jobs.list()]


@router.get("/{job_id}", response_model=JobOut, summary="One job's state and progress")
def get_job(job_id: str, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    job = state.jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"unknown job {job_id!r}")
    return job.to_dict()
