"""The typed records of the HTTP API (pydantic): requests, and the answers' shapes for OpenAPI."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dnsvr.serve.verdicts import VERDICTS

Precision = Literal["exact", "int8"]
Match = Literal["related", "copy"]
VerdictName = Literal["copy", "partial", "related", "not_related"]
if set(VerdictName.__args__) != set(VERDICTS):  # one list of verdicts: the store's
    raise RuntimeError(f"the API's verdicts {VerdictName.__args__} differ from the store's {VERDICTS}")


class SearchParams(BaseModel):
    """The options of ``dnsvr search`` (same names, same meaning)."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(10, ge=1, le=10_000, description="Results per query.")
    budget: str | None = Field(None, max_length=64, description="Fine re-ranking budget: '5%', '0.05', '1000' "
                                                                "pairs, or both ('5%,1000'). Default 1000 pairs.")
    segments: bool = Field(True, description="Aligned matching segments of re-ranked results.")
    include_self: bool = Field(False, description="Keep an indexed query in its own results.")
    precision: Precision | None = Field(None, description="Fine-stage products: 'exact' or 'int8'.")
    ann: int | None = Field(None, ge=1, le=1_000_000, description="Coarse stage over an ANN top-N.")
    match: Match | None = Field(None, description="'related' (default: everything that shares content) or "
                                                  "'copy' (whole copies first).")

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        if value is not None:
            from dnsvr.search import Budget

            Budget.parse(value)  # ValueError → 422 with the accepted forms
        return value


class SearchRequest(SearchParams):
    """A search by an indexed video's id, or by a file under the media roots (exactly one)."""

    video_id: str | None = Field(None, min_length=1, max_length=1024)
    path: str | None = Field(None, min_length=1, max_length=4096,
                             description="A file relative to a media root (or absolute inside one).")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.video_id is None) == (self.path is None):
            raise ValueError("give exactly one of video_id or path")
        return self


class SegmentOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    query_start: float
    query_end: float
    target_start: float
    target_end: float
    score: float


class ResultOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields a newer library adds (coverage...) pass through
    video_id: str
    score: float
    coarse_score: float
    selector_score: float | None
    fine_score: float | None
    stage: str
    segments: list[SegmentOut] = []


class QueryOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    query: str
    candidates: int
    fine_pairs: int
    timings: dict[str, float]
    results: list[ResultOut]


class SearchResponse(BaseModel):
    """The document of ``dnsvr search --json``, plus the query's media reference."""

    model_config = ConfigDict(extra="allow")
    index: str
    budget: str
    top_k: int | None
    queries: list[QueryOut]
    query_ref: str = Field(description="Media reference of the query (video:…, upload:…, path:…).")


class VideoOut(BaseModel):
    video_id: str
    frames: int
    duration: float | None
    source: str | None
    added: float
    width: int | None = None
    height: int | None = None
    ref: str


class VideoList(BaseModel):
    total: int
    offset: int
    videos: list[VideoOut]


class MediaInfo(BaseModel):
    ref: str
    duration: float | None
    width: int
    height: int
    fps: float | None
    codec: str
    bytes: int


class AddJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(..., min_length=1, max_length=10_000,
                             description="Video files, folders or feature files under the media roots.")
    on_duplicate: Literal["error", "replace", "skip"] = "skip"


class RemoveJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video_ids: list[str] = Field(..., min_length=1, max_length=100_000)
    missing: Literal["error", "ignore"] = "ignore"


class JobOut(BaseModel):
    id: str
    kind: str
    state: str
    created: float
    started: float | None
    finished: float | None
    total: int
    done: int
    added: int
    removed: int
    failures: list[dict[str, str]]
    error: str | None
    inputs: list[str]


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=1024, description="The query's name as search reports it.")
    video_id: str = Field(..., min_length=1, max_length=1024)
    verdict: VerdictName
    note: str = Field("", max_length=2000)
    query_ref: str = Field("", max_length=4200)
    score: float | None = None


class VerdictOut(VerdictIn):
    updated: float


class VerdictList(BaseModel):
    total: int
    verdicts: list[VerdictOut]


class Health(BaseModel):
    status: str
    videos: int


class MetricsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    videos: int
    index_bytes: int
    queries_served: int
    search: dict[str, Any]
    requests: dict[str, Any]
    jobs_active: int
    verdicts: int
    uptime_s: float
