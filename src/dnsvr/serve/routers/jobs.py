"""``/api/jobs``: add and remove videos in the background (one writer at a time; reads go on)."""

from __future__ import annotations

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
    paths = [state.resolver.under_roots(p) if not _is_dir_under(state, p) else _dir_under(state, p)
             for p in body.paths]
    return state.jobs.submit_add(paths, on_duplicate=body.on_duplicate).to_dict()


def _is_dir_under(state: ServiceState, text: str) -> bool:
    try:
        _dir_under(state, text)
        return True
    except ApiError:
        return False


def _dir_under(state: ServiceState, text: str) -> Any:
    """A folder under the media roots (same confinement rules as files)."""
    from pathlib import Path, PurePosixPath

    pure = PurePosixPath(text.replace("\\", "/"))
    if not text or "\x00" in text or ".." in pure.parts:
        raise ApiError(400, f"invalid path {text!r}")
    cands = [Path(pure)] if pure.is_absolute() else [r / pure for r in state.resolver.roots]
    for c in cands:
        try:
            real = c.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real.is_dir() and any(real.is_relative_to(r) for r in state.resolver.roots):
            return real
    raise ApiError(404, f"no folder {text!r} under the media roots")


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
