"""``/api/health``, ``/api/metrics``, ``/api/info``: is it up, how is it doing, what does it allow."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from dnsvr.bundle import MATCH_MODES
from dnsvr.serve.deps import get_state, require_read
from dnsvr.serve.models import Health, MetricsOut
from dnsvr.serve.state import ServiceState
from dnsvr.serve.verdicts import VERDICTS

router = APIRouter(prefix="/api", tags=["system"])


@router.get("/health", response_model=Health, summary="Liveness (open, for probes)")
def health(state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    return {"status": "ok", "videos": len(state.index)}


def _index_bytes(state: ServiceState) -> int:
    """Bytes on disk of the store (of every shard of a sharded index): fine shards + SQLite + derived coarse data."""
    store = state.index.info().get("store")
    if store is None:
        return 0
    b = store["bytes"]
    return int(b["fine_shards"] + b["sqlite"] + b["coarse_derived"])


@router.get("/metrics", response_model=MetricsOut, dependencies=[Depends(require_read)],
            summary="Index size, queries served, latency percentiles")
def metrics(state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    summary = state.metrics.summary()
    search = summary.pop("search", {"count": 0, "failed": 0})
    return {"videos": len(state.index), "index_bytes": _index_bytes(state),
            "queries_served": search["count"] - search["failed"], "search": search, "requests": summary,
            "jobs_active": state.jobs.active(), "verdicts": len(state.verdicts), "uptime_s": round(state.uptime(), 3)}


@router.get("/info", dependencies=[Depends(require_read)], summary="The index and this service's rules")
def info(state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    cfg = state.config
    return {"index": str(cfg.index_path), "videos": len(state.index), "bundle": state.index.bundle.identity(),
            "media_roots": len(cfg.media_roots) > 0, "writes": cfg.token is not None, "token_for_reads": cfg.public,
            "max_upload_bytes": cfg.max_upload_bytes, "upload_suffixes": sorted(cfg.upload_suffixes),
            "verdicts": list(VERDICTS), "match_modes": list(MATCH_MODES),
            "shards": list(getattr(state.index, "shard_names", [])) or None, "ray": getattr(state.index, "ray", None)}
