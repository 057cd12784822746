"""``/api/verdicts``: reviewers' decisions per (query, result), listed and exported as a benchmark."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from dnsvr.serve.deps import get_state, require_read, require_write
from dnsvr.serve.errors import ApiError
from dnsvr.serve.models import VerdictIn, VerdictList, VerdictOut
from dnsvr.serve.state import ServiceState

router = APIRouter(prefix="/api/verdicts", tags=["verdicts"], dependencies=[Depends(require_read)])


@router.get("", response_model=VerdictList, summary="All verdicts (of one query)")
def list_verdicts(query: str | None = Query(None, max_length=1024),
                  state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    items = [v.to_dict() for v in state.verdicts.list(query)]
    return {"total": len(items), "verdicts": items}


@router.put("", response_model=VerdictOut, dependencies=[Depends(require_write)],
            summary="Record (or replace) the verdict on a (query, result) pair")
def put_verdict(body: VerdictIn, state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    try:
        v = state.verdicts.put(body.query, body.video_id, body.verdict, body.note, body.query_ref, body.score)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return v.to_dict()


@router.delete("", status_code=204, dependencies=[Depends(require_write)], summary="Forget a verdict")
def delete_verdict(query: str = Query(..., max_length=1024), video_id: str = Query(..., max_length=1024),
                   state: ServiceState = Depends(get_state)) -> Response:
    if not state.verdicts.delete(query, video_id):
        raise ApiError(404, f"no verdict on ({query!r}, {video_id!r})")
    return Response(status_code=204)


@router.get("/export", summary="Ground truth for `dnsvr evaluate --benchmark custom`",
            responses={200: {"content": {"application/json": {}}}})
def export_verdicts(state: ServiceState = Depends(get_state)) -> Response:
    """``{query: {video_id: verdict}}``; evaluate with ``--positive-labels copy,partial`` (or your choice)."""
    body = json.dumps(state.verdicts.ground_truth(), indent=1, sort_keys=True)
    return Response(body, media_type="application/json",
                    headers={"Content-Disposition": 'attachment; filename="verdicts_ground_truth.json"'})
